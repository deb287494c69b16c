// The console page, /web/console/<node>/<login>: one terminal on a node,
// over the proxy's WebSocket (teleconch/web/terminal.py); or
// /web/console/session/<sid>?mode=observer|peer: a live session, joined.
//
// - The bearer token is the socket's first frame, never in the URL.
// - Terminal bytes are binary frames both ways, handed to xterm.js as
//   Uint8Array (it decodes UTF-8 across frames); control messages are JSON.
// - Flow control: once xterm.js has processed output (its write callback),
//   the page acknowledges it with {"type": "ack", "bytes": n}; the proxy
//   stops reading the node while too much is unacknowledged.
// - The terminal follows the window's size (fit addon) and tells the proxy.

import { installConstructableStyles } from '/web/static/console-csp.js';
import { Terminal } from '/web/static/vendor/xterm/xterm.mjs';
import { FitAddon } from '/web/static/vendor/xterm/addon-fit.mjs';
import {
  clusterName, mountHeader, sentence, session, toLogin,
} from '/web/static/app.js';

// An ack goes once this much is processed, or this long after the first
// unacknowledged byte was.
const ACK_BYTES = 32 * 1024;
const ACK_DELAY_MS = 20;
// Close codes the proxy uses (terminal_messages.py): log in again.
const CLOSE_LOGIN = 4001;

const where = document.getElementById('where');
const statusLine = document.getElementById('status');
const reconnectButton = document.getElementById('reconnect');
const box = document.getElementById('terminal');
const notices = document.getElementById('notices');

function say(text, problem) {
  statusLine.textContent = text;
  statusLine.classList.toggle('problem', Boolean(problem));
}

function target() {
  const parts = location.pathname.split('/').filter(Boolean); // web console node login
  if (parts.length !== 4 || parts[0] !== 'web' || parts[1] !== 'console') return null;
  try {
    if (parts[2] === 'session') {
      const mode = new URLSearchParams(location.search).get('mode') === 'peer'
        ? 'peer' : 'observer';
      return { sid: decodeURIComponent(parts[3]), mode };
    }
    return { node: decodeURIComponent(parts[2]), login: decodeURIComponent(parts[3]) };
  } catch (e) {
    return null;
  }
}

function notice(text) {
  const line = document.createElement('li');
  line.textContent = text;
  notices.append(line);
  notices.hidden = false;
  console.info(`[teleconch] ${text}`);
}

class Console {
  constructor(term, fit, found, cluster) {
    this.term = term;
    this.fit = fit;
    this.node = found.node;
    this.login = found.login;
    this.sid = found.sid; // joining this session, as found.mode
    this.mode = found.mode || 'owner';
    this.cluster = cluster;
    this.socket = null;
    this.pendingAck = 0;
    this.ackTimer = null;
    this.encoder = new TextEncoder();
    term.onData((data) => this.send(this.encoder.encode(data)));
    term.onBinary((data) => this.send(Uint8Array.from(data, (c) => c.charCodeAt(0) & 0xff)));
    term.onResize(({ cols, rows }) => this.control({ type: 'resize', cols, rows }));
    reconnectButton.addEventListener('click', () => this.reconnect());
  }

  url() {
    const term = { w: this.term.cols, h: this.term.rows };
    const params = JSON.stringify(this.sid
      ? { sid: this.sid, mode: this.mode, term }
      : { server_id: this.node, login: this.login, term });
    const cluster = encodeURIComponent(this.cluster);
    return `wss://${location.host}/v1/webapi/sites/${cluster}/connect?params=` +
      encodeURIComponent(params);
  }

  connect() {
    const held = session();
    if (!held) {
      toLogin();
      return;
    }
    this.ended = null; // what the proxy said before closing: exit or error
    this.pendingAck = 0;
    say(this.sid ? `Joining session ${this.sid}…` : `Connecting to ${this.login}@${this.node}…`);
    reconnectButton.hidden = true;
    const socket = new WebSocket(this.url());
    socket.binaryType = 'arraybuffer';
    this.socket = socket;
    this.opened = false;
    socket.addEventListener('open', () => {
      this.opened = true;
      socket.send(JSON.stringify({ token: held.token }));
    });
    socket.addEventListener('message', (event) => {
      if (socket !== this.socket) return;
      if (typeof event.data === 'string') this.onControl(event.data);
      else this.onOutput(new Uint8Array(event.data));
    });
    socket.addEventListener('close', (event) => {
      if (socket === this.socket) this.onClose(event);
    });
  }

  onOutput(bytes) {
    this.term.write(bytes, () => this.processed(bytes.length));
  }

  processed(n) {
    this.pendingAck += n;
    if (this.pendingAck >= ACK_BYTES) {
      this.flushAck();
    } else if (this.ackTimer === null) {
      this.ackTimer = setTimeout(() => this.flushAck(), ACK_DELAY_MS);
    }
  }

  flushAck() {
    if (this.ackTimer !== null) {
      clearTimeout(this.ackTimer);
      this.ackTimer = null;
    }
    if (this.pendingAck > 0) {
      const bytes = this.pendingAck;
      this.pendingAck = 0;
      this.control({ type: 'ack', bytes });
    }
  }

  onControl(text) {
    let message;
    try {
      message = JSON.parse(text);
    } catch (e) {
      return;
    }
    if (message.type === 'session') {
      this.sessionId = message.id;
      if (message.mode === 'observer') {
        say(`Connected to ${message.login}@${message.node} as observer: your keys are not sent.`);
      } else if (message.mode === 'peer') {
        say(`Connected to ${message.login}@${message.node} as peer.`);
      } else {
        say(`Connected to ${message.login}@${message.node}.`);
      }
      if (this.sid) this.term.resize(message.cols, message.rows); // the owner's size
      this.term.focus();
    } else if (message.type === 'party') {
      notice(message.message);
    } else if (message.type === 'exit') {
      this.ended = message;
    } else if (message.type === 'error') {
      this.ended = message;
    }
  }

  onClose(event) {
    if (this.ackTimer !== null) clearTimeout(this.ackTimer);
    this.ackTimer = null;
    this.socket = null;
    const ended = this.ended;
    if (event.code === CLOSE_LOGIN) {
      toLogin();
      return;
    }
    if (ended && ended.type === 'exit') {
      const how = ended.status !== null && ended.status !== undefined
        ? `The shell exited with status ${ended.status}.`
        : sentence(ended.message || 'the session ended');
      say(how, ended.status !== 0);
    } else if (ended && ended.type === 'error') {
      say(sentence(ended.message), true);
    } else if (!this.opened) {
      // The browser does not show a refused upgrade's answer to the page.
      say('Could not open the terminal\'s connection: the proxy is unreachable, or ' +
        'it refused this page because it was opened at another address than the ' +
        'proxy\'s public one (proxy_service.public_addr). Open the web UI at that ' +
        'address and try again (an administrator sees the reason with ' +
        '`teleconch-ctl events ls --type web.terminal.refused`).', true);
    } else {
      say('The connection to the proxy was lost.', true);
    }
    reconnectButton.hidden = false;
    reconnectButton.focus();
  }

  send(bytes) {
    if (this.mode === 'observer') return; // the proxy would drop them anyway
    if (this.socket && this.socket.readyState === WebSocket.OPEN) this.socket.send(bytes);
  }

  control(message) {
    if (this.socket && this.socket.readyState === WebSocket.OPEN) {
      this.socket.send(JSON.stringify(message));
    }
  }

  reconnect() {
    this.term.reset();
    this.connect();
  }
}

async function main() {
  const found = target();
  if (!found) {
    say('This page opens a node: /web/console/<node>/<login>. Choose one on the Nodes page.', true);
    return;
  }
  const title = found.sid ? `session ${found.sid} (${found.mode})`
    : `${found.login}@${found.node}`;
  document.title = title;
  where.textContent = title;
  if (!session()) {
    toLogin();
    return;
  }
  mountHeader('');
  if (globalThis.teleconchXtermMissing) {
    say(sentence(globalThis.teleconchXtermMissing), true);
    return;
  }
  installConstructableStyles(document);
  const term = new Terminal({
    cursorBlink: true,
    fontFamily: 'ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace',
    fontSize: 14,
    scrollback: 5000,
  });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.open(box);
  if (!found.sid) fit.fit(); // a joined session keeps its owner's size
  let pending = false;
  window.addEventListener('resize', () => {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      if (!found.sid) fit.fit();
    });
  });
  let cluster;
  try {
    cluster = await clusterName();
  } catch (e) {
    say(e.message || String(e), true);
    return;
  }
  const console_ = new Console(term, fit, found, cluster);
  window.teleconchConsole = console_; // for tests and the curious
  console_.connect();
}

main();
