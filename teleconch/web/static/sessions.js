// The active sessions page: the cluster's live terminal sessions on nodes
// this person may reach (from the auth service, whichever proxy holds them).
import { APIError, api, clusterName, element, formatTime, mountHeader, requireSession,
  showError } from '/web/static/app.js';

const $ = (id) => document.getElementById(id);

function owner(s) {
  return s.user || (s.parties[0] && s.parties[0].user) || '';
}

function row(s) {
  const tr = element('tr', { 'data-session': s.id });
  tr.append(element('td', {}, owner(s)));
  tr.append(element('td', {}, s.server_hostname || s.server_addr));
  tr.append(element('td', {}, s.login));
  tr.append(element('td', {}, formatTime(s.created)));
  const parties = element('td');
  const list = element('ul', { class: 'parties' });
  for (const p of s.parties) {
    const who = p.mode ? `${p.user}, ${p.mode}` : p.user;
    list.append(element('li', {}, p.remote_addr ? `${who} (${p.remote_addr})` : who));
  }
  parties.append(list);
  tr.append(parties);
  const join = element('td');
  for (const mode of s.join_modes || []) {
    const href = `/web/console/session/${encodeURIComponent(s.id)}?mode=${mode}`;
    join.append(element('a', { class: 'button', href, 'data-mode': mode },
      mode === 'peer' ? 'Join as peer' : 'Observe'), ' ');
  }
  tr.append(join);
  return tr;
}

async function load() {
  const button = $('refresh');
  button.disabled = true;
  showError($('error'), '');
  try {
    const cluster = await clusterName();
    const answer = await api('GET', `/v1/webapi/sites/${encodeURIComponent(cluster)}/sessions`);
    const sessions = answer.sessions || [];
    $('sessions').querySelector('tbody').replaceChildren(...sessions.map(row));
    $('sessions').hidden = sessions.length === 0;
    $('empty').hidden = sessions.length !== 0;
    $('count').textContent = `${sessions.length} active session${sessions.length === 1 ? '' : 's'}`;
  } catch (e) {
    showError($('error'), e instanceof APIError ? e.message : String(e));
  } finally {
    $('loading').hidden = true;
    button.disabled = false;
  }
}

if (requireSession()) {
  mountHeader('sessions');
  $('refresh').addEventListener('click', load);
  load();
}
