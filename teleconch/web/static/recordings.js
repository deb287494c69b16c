// The recordings page: the recorded sessions this person may watch (the
// auth service decides which), searched by user, node and text on the
// server (the text search reads the recordings' output there), each row
// linking to the player.
import { APIError, api, clusterName, element, formatTime, mountHeader, requireSession,
  showError } from '/web/static/app.js';
import { clock } from '/web/static/player-time.js';

const $ = (id) => document.getElementById(id);
const FIELDS = ['user', 'node', 'text'];

function row(r) {
  const tr = element('tr', { 'data-recording': r.id });
  tr.append(element('td', {}, formatTime(r.start)));
  tr.append(element('td', {}, r.user));
  tr.append(element('td', {}, r.node));
  tr.append(element('td', {}, r.login));
  tr.append(element('td', {}, clock(r.duration_ms) + (r.complete ? '' : ' (uploading)')));
  const cell = element('td');
  cell.append(element('a', {
    href: `/web/player/${encodeURIComponent(r.id)}`, class: 'login',
    'aria-label': `Play ${r.user}'s session on ${r.node} of ${formatTime(r.start)}`,
  }, 'Play'));
  tr.append(cell);
  return tr;
}

// The search as the page's address says it (?user=&node=&q=), so a search
// can be bookmarked and Back works.
function fromAddress() {
  const params = new URLSearchParams(location.search);
  $('user').value = params.get('user') || '';
  $('node').value = params.get('node') || '';
  $('text').value = params.get('q') || '';
}

function query() {
  const params = new URLSearchParams();
  for (const [id, name] of [['user', 'user'], ['node', 'node'], ['text', 'q']]) {
    const value = $(id).value.trim();
    if (value) params.set(name, value);
  }
  return params;
}

async function load() {
  const button = $('search').querySelector('button');
  button.disabled = true;
  showError($('error'), '');
  try {
    const cluster = await clusterName();
    const params = query();
    const path = `/v1/webapi/sites/${encodeURIComponent(cluster)}/recordings` +
      (params.toString() ? `?${params}` : '');
    const { recordings = [], cut_short: cutShort } = await api('GET', path);
    $('recordings').querySelector('tbody').replaceChildren(...recordings.map(row));
    $('recordings').hidden = recordings.length === 0;
    $('empty').hidden = recordings.length !== 0;
    const searched = FIELDS.some((id) => $(id).value.trim());
    $('count').textContent = `${recordings.length} recording${recordings.length === 1 ? '' : 's'}` +
      (searched ? ' match' + (recordings.length === 1 ? 'es' : '') : '') +
      (cutShort ? '. The text search stopped before reading every recording: there may ' +
        'be more; narrow it by user or node.' : '');
  } catch (e) {
    showError($('error'), e instanceof APIError ? e.message : String(e));
  } finally {
    $('loading').hidden = true;
    button.disabled = false;
  }
}

if (requireSession()) {
  mountHeader('recordings');
  fromAddress();
  $('search').addEventListener('submit', (event) => {
    event.preventDefault();
    const params = query();
    history.replaceState(null, '', location.pathname + (params.toString() ? `?${params}` : ''));
    load();
  });
  load();
}
