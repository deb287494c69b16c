// The web UI's shared module: the session this browser holds, calls to the
// web API, and the header every logged-in page shows.
//
// A web session is two secrets: the HttpOnly cookie (the browser sends it;
// no script can read it) and the bearer token kept here, in localStorage
// under `teleconch.session` as JSON {token, user, expires} (so a console
// opened in a new tab has it too).  Every API call sends both.

const KEY = 'teleconch.session';
export const HOME = '/web/nodes';
const SESSION_GONE = 'invalid_token';

export class APIError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

// The server writes its messages for a terminal ("the code is wrong: ...");
// in a page they read as sentences.
export function sentence(message) {
  const text = String(message || '').trim();
  if (!text) return text;
  const first = text.charAt(0).toUpperCase() + text.slice(1);
  return /[.!?]$/.test(first) ? first : first + '.';
}

export function session() {
  let found = null;
  try {
    found = JSON.parse(localStorage.getItem(KEY) || 'null');
  } catch (e) {
    found = null;
  }
  if (!found || typeof found.token !== 'string' || !found.token) return null;
  if (typeof found.expires === 'number' && found.expires * 1000 <= Date.now()) {
    forgetSession();
    return null;
  }
  return found;
}

export function saveSession(token, user, expires) {
  localStorage.setItem(KEY, JSON.stringify({ token, user, expires }));
}

export function forgetSession() {
  localStorage.removeItem(KEY);
}

// The login page, coming back here afterwards.
export function loginUrl() {
  return '/web/login?next=' + encodeURIComponent(location.pathname);
}

export function toLogin() {
  forgetSession();
  location.replace(loginUrl());
}

// One call of the web API: the bearer and, for a body, JSON.  A 401 that
// says the session is gone (WWW-Authenticate: invalid_token) goes to the
// login page; any other error is thrown as an APIError with the server's
// message, as a sentence.
export async function api(method, path, body) {
  const held = session();
  const headers = { Accept: 'application/json' };
  if (held) headers.Authorization = 'Bearer ' + held.token;
  const options = { method, headers, credentials: 'same-origin', cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    options.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, options);
  } catch (e) {
    throw new APIError('Could not reach the proxy. Check your connection and try again.', 0);
  }
  let data = null;
  try {
    data = await response.json();
  } catch (e) {
    data = null;
  }
  if (response.ok) return data || {};
  const message = (data && data.error && data.error.message) ||
    `The request failed (HTTP ${response.status}).`;
  const challenge = response.headers.get('WWW-Authenticate') || '';
  if (response.status === 401 && challenge.includes(SESSION_GONE) &&
      !path.startsWith('/v1/webapi/sessions')) {
    toLogin();
  }
  throw new APIError(sentence(message), response.status);
}

// The page's session, or off to the login page.
export function requireSession() {
  const held = session();
  if (!held) toLogin();
  return held;
}

// The cluster's name, for the /v1/webapi/sites/<cluster>/ routes.
export async function clusterName() {
  const { sites } = await api('GET', '/v1/webapi/sites');
  return sites[0].name;
}

export async function logout() {
  try {
    await api('DELETE', '/v1/webapi/sessions');
  } catch (e) {
    // Gone already, or the proxy is unreachable: this browser forgets it anyway.
  }
  forgetSession();
  location.assign('/web/login');
}

export function element(tag, attributes, text) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) el.setAttribute(name, value);
  if (text !== undefined) el.textContent = text;
  return el;
}
const NAV = [
  ['nodes', 'Nodes', '/web/nodes'],
  ['sessions', 'Sessions', '/web/sessions'],
  ['recordings', 'Recordings', '/web/recordings'],
  ['account', 'Account', '/web/account'],
];

// The header of every logged-in page: where to go, who is logged in, and
// the Log out button.  `current` names this page.
export function mountHeader(current) {
  const held = session();
  const header = element('header', { class: 'top' });
  header.append(element('a', { class: 'brand', href: HOME }, 'teleconch'));
  const nav = element('nav', { 'aria-label': 'Main' });
  for (const [name, label, href] of NAV) {
    const link = element('a', { href }, label);
    if (name === current) link.setAttribute('aria-current', 'page');
    nav.append(link);
  }
  header.append(nav);
  const who = element('div', { class: 'who' });
  if (held && held.user) who.append(element('span', { id: 'user' }, held.user));
  const button = element('button', { type: 'button', id: 'logout', class: 'secondary' }, 'Log out');
  button.addEventListener('click', () => {
    button.disabled = true;
    logout();
  });
  who.append(button);
  header.append(who);
  document.body.prepend(header);
  return header;
}

export function showError(el, message) {
  el.textContent = message || '';
  el.hidden = !message;
}

export function formatTime(seconds) {
  if (!seconds) return '';
  return new Date(seconds * 1000).toLocaleString();
}
