// The nodes page: what the person's roles let them reach, filtered as they
// type, with one link per allowed login to the web terminal.
import { APIError, api, clusterName, element, mountHeader, requireSession, showError }
  from '/web/static/app.js';

const $ = (id) => document.getElementById(id);
let nodes = [];

function labelText(tag) {
  return `${tag.name}=${tag.value}`;
}

// Every word of the query must be in the node's name or one of its labels.
function matches(node, words) {
  const haystack = [node.hostname, ...node.tags.map(labelText)].map((s) => s.toLowerCase());
  return words.every((word) => haystack.some((text) => text.includes(word)));
}

function row(node) {
  const tr = element('tr', { 'data-node': node.hostname });
  tr.append(element('th', { scope: 'row' }, node.hostname));
  tr.append(element('td', { class: 'addr' }, node.addr));
  const labels = element('td');
  for (const tag of node.tags) labels.append(element('span', { class: 'label' }, labelText(tag)));
  tr.append(labels);
  const cell = element('td');
  const logins = element('div', { class: 'logins' });
  cell.append(logins);
  for (const login of node.logins) {
    const href = `/web/console/${encodeURIComponent(node.hostname)}/${encodeURIComponent(login)}`;
    logins.append(element('a', {
      href, target: '_blank', rel: 'noopener', class: 'login',
      'aria-label': `${login}@${node.hostname}`,
    }, login));
  }
  tr.append(cell);
  return tr;
}

function show() {
  const words = $('search').value.toLowerCase().split(/\s+/).filter(Boolean);
  const shown = nodes.filter((node) => matches(node, words));
  const body = $('nodes').querySelector('tbody');
  body.replaceChildren(...shown.map(row));
  $('nodes').hidden = shown.length === 0;
  const empty = $('empty');
  if (nodes.length === 0) {
    empty.textContent = 'Your roles let you reach no node yet; ask an administrator.';
  } else if (shown.length === 0) {
    empty.textContent = `No node matches “${$('search').value.trim()}”.`;
  }
  empty.hidden = shown.length !== 0;
  $('count').textContent = words.length
    ? `${shown.length} of ${nodes.length} nodes`
    : `${nodes.length} node${nodes.length === 1 ? '' : 's'}`;
}

async function load() {
  try {
    const cluster = await clusterName();
    const answer = await api('GET', `/v1/webapi/sites/${encodeURIComponent(cluster)}/nodes`);
    nodes = answer.items || [];
    show();
  } catch (e) {
    showError($('error'), e instanceof APIError ? e.message : String(e));
  } finally {
    $('loading').hidden = true;
  }
}

if (requireSession()) {
  mountHeader('nodes');
  $('search').addEventListener('input', show);
  load();
}
