// The player, /web/player/<sid>: a recorded session replayed in xterm.js.
//
// - The recording streams in ranges (player-stream.js): while it plays, the
//   next range is fetched ahead, at most AHEAD ranges wait, and played ones
//   are dropped, so the tab never holds a whole recording.
// - Output goes to xterm.js one write at a time, the next from the write's
//   callback; while more than HIGH_WATER bytes wait, the clock holds, so a
//   fast speed slows down on heavy output rather than flood the tab.
// - A seek resets the terminal and writes the output from the last
//   full-screen clear before the time, then plays on from there.
// - Skip idle caps every gap between events at IDLE_CAP_MS.
// The state is on #player's data-state: loading, paused, playing, seeking,
// ended, error.

import { installConstructableStyles } from '/web/static/console-csp.js';
import { Terminal } from '/web/static/vendor/xterm/xterm.mjs';
import { clusterName, mountHeader, requireSession, sentence } from '/web/static/app.js';
import { Source, rebuildOps, sizeOf } from '/web/static/player-stream.js';
import { clock } from '/web/static/player-time.js';

const AHEAD = 2;
const HIGH_WATER = 256 * 1024;
const WRITE_PIECE = 64 * 1024;
const IDLE_CAP_MS = 1000;
const STEP_MS = 5000;
const TICK_MS = 30;

const $ = (id) => document.getElementById(id);

function say(text, problem) {
  $('status').textContent = text;
  $('status').classList.toggle('problem', Boolean(problem));
}

function recordingId() {
  const parts = location.pathname.split('/').filter(Boolean); // web player sid
  if (parts.length !== 3 || parts[0] !== 'web' || parts[1] !== 'player') return null;
  try {
    return decodeURIComponent(parts[2]);
  } catch (e) {
    return null;
  }
}

// Writes to xterm.js in order, one at a time; sizes between them.
class Screen {
  constructor(term) {
    this.term = term;
    this.ops = [];
    this.writing = false;
    this.pending = 0; // bytes queued or being written
    this.waiters = [];
  }

  write(data) {
    for (let at = 0; at < data.length; at += WRITE_PIECE) {
      const piece = data.subarray(at, at + WRITE_PIECE);
      this.pending += piece.length;
      this.ops.push({ data: piece });
    }
    this.pump();
  }

  resize(size) {
    if (size) this.ops.push({ size });
    this.pump();
  }

  pump() {
    while (!this.writing && this.ops.length) {
      const op = this.ops.shift();
      if (op.size) {
        if (op.size.cols !== this.term.cols || op.size.rows !== this.term.rows) {
          this.term.resize(op.size.cols, op.size.rows);
        }
        continue;
      }
      this.writing = true;
      this.term.write(op.data, () => {
        this.writing = false;
        this.pending -= op.data.length;
        this.pump();
      });
    }
    if (!this.writing && !this.ops.length) {
      const waiters = this.waiters;
      this.waiters = [];
      for (const w of waiters) w();
    }
  }

  // Drop what is queued; resolves once the write under way is done.
  drop() {
    for (const op of this.ops) if (op.data) this.pending -= op.data.length;
    this.ops = [];
    return this.settled();
  }

  settled() {
    if (!this.writing && !this.ops.length) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push(resolve));
  }
}

class Player {
  constructor(term, source, info) {
    this.term = term;
    this.screen = new Screen(term);
    this.source = source;
    this.duration = info.duration_ms;
    const r = info.recording;
    this.initialSize = { cols: r.cols || term.cols, rows: r.rows || term.rows };
    this.position = 0;
    this.speed = 1;
    this.skipIdle = false;
    this.playing = false;
    this.generation = 0;
    this.ranges = []; // [{events, i}] waiting to be played, the first playing
    this.nextOffset = 0;
    this.end = false;
    this.fetching = null;
    this.timer = null;
    this.dragging = false;
    this.ended = null; // the session.end event, once played
    this.sizes = []; // [{ms, cols, rows}] of the ranges read so far, by time
  }

  // The sizes a recording's ranges show, kept (a few numbers each) so that
  // a rebuild starting after one knows the size then.
  noteSizes(events) {
    for (const e of events) {
      const size = sizeOf(e);
      if (!size || this.sizes.some((s) => s.ms === e.ms)) continue;
      this.sizes.push({ ms: e.ms, ...size });
      this.sizes.sort((a, b) => a.ms - b.ms);
    }
  }

  sizeAt(ms) {
    let found = this.initialSize;
    for (const s of this.sizes) if (s.ms <= ms) found = s;
    return { cols: found.cols, rows: found.rows };
  }

  set state(value) {
    $('player').dataset.state = value;
    const playing = value === 'playing';
    $('play').textContent = playing ? 'Pause' : 'Play';
  }

  get state() {
    return $('player').dataset.state;
  }

  // --- the ranges ahead

  peek() {
    while (this.ranges.length && this.ranges[0].i >= this.ranges[0].events.length) {
      this.ranges.shift(); // played: dropped
    }
    return this.ranges.length ? this.ranges[0].events[this.ranges[0].i] : null;
  }

  take() {
    this.ranges[0].i += 1;
  }

  prefetch() {
    if (this.end || this.fetching || this.ranges.length > AHEAD) return;
    const generation = this.generation;
    this.fetching = this.source.range({ offset: this.nextOffset }).then((r) => {
      if (generation !== this.generation) return;
      this.fetching = null;
      this.accept(r.events, r.next, r.end);
      if (this.playing) this.prefetch();
    }, (e) => {
      if (generation !== this.generation) return;
      this.fetching = null;
      this.fail(e);
    });
  }

  accept(events, next, end) {
    this.noteSizes(events);
    if (events.length) this.ranges.push({ events, i: 0 });
    this.nextOffset = next;
    // Nothing more stored yet (an upload under way): the end of what there is.
    this.end = end || !events.length;
  }

  // --- playing

  play() {
    if (this.state === 'seeking' || this.state === 'loading') return;
    if (this.state === 'ended' || this.position >= this.duration) {
      this.seek(0).then(() => this.play());
      return;
    }
    this.playing = true;
    this.state = 'playing';
    say('Playing.');
    this.last = performance.now();
    this.prefetch();
    this.schedule();
  }

  pause() {
    this.playing = false;
    clearTimeout(this.timer);
    this.timer = null;
    if (this.state === 'playing') this.state = 'paused';
    say(`Paused at ${clock(this.position)}.`);
    this.showTime();
  }

  toggle() {
    if (this.playing) this.pause();
    else this.play();
  }

  schedule() {
    clearTimeout(this.timer);
    if (this.playing) this.timer = setTimeout(() => this.tick(), TICK_MS);
  }

  tick() {
    if (!this.playing) return;
    const now = performance.now();
    let budget = (now - this.last) * this.speed;
    this.last = now;
    if (this.screen.pending > HIGH_WATER) {
      this.schedule(); // xterm.js catches up; the clock holds
      return;
    }
    let batch = [];
    let batched = 0;
    const flush = () => {
      if (!batch.length) return;
      const data = new Uint8Array(batched);
      let at = 0;
      for (const piece of batch) {
        data.set(piece, at);
        at += piece.length;
      }
      this.screen.write(data);
      batch = [];
      batched = 0;
    };
    for (;;) {
      const e = this.peek();
      if (!e) {
        if (this.end && !this.fetching) {
          flush();
          this.finish();
          return;
        }
        break; // the next range is on its way: the clock holds
      }
      if (this.skipIdle && e.ms - this.position > IDLE_CAP_MS) this.position = e.ms - IDLE_CAP_MS;
      const wait = Math.max(0, e.ms - this.position);
      if (wait > budget) {
        this.position += budget;
        break;
      }
      budget -= wait;
      this.position = Math.max(this.position, e.ms);
      this.take();
      if (e.type === 'print') {
        batch.push(e.data);
        batched += e.data.length;
        if (batched > HIGH_WATER) break;
      } else if (sizeOf(e)) {
        flush();
        this.screen.resize(sizeOf(e));
      } else if (e.type === 'session.end') {
        this.ended = e;
      }
    }
    flush();
    this.prefetch();
    this.showTime();
    this.schedule();
  }

  finish() {
    this.playing = false;
    this.position = this.duration;
    this.state = 'ended';
    const e = this.ended;
    const status = e && e.exit_code !== null && e.exit_code !== undefined
      ? ` The shell exited with status ${e.exit_code}.` : '';
    say(`The recording has ended.${status}`);
    this.showTime();
  }

  // --- seeking

  async seek(ms) {
    const generation = ++this.generation;
    const wasPlaying = this.playing;
    this.playing = false;
    clearTimeout(this.timer);
    this.state = 'seeking';
    const target = Math.max(0, Math.min(Math.round(ms), this.duration));
    this.position = target;
    this.showTime();
    say(`Going to ${clock(target)}…`);
    this.fetching = null;
    this.ranges = [];
    this.ended = null;
    try {
      const t0 = performance.now();
      await this.screen.drop();
      const found = await this.source.screenAt(target);
      if (generation !== this.generation) return;
      const t1 = performance.now();
      this.term.reset();
      this.noteSizes(found.history);
      const { ms: from, ops } = rebuildOps(found.history);
      this.screen.resize(ops[0].size || this.sizeAt(from));
      for (const op of ops.slice(1)) {
        if (op.data) this.screen.write(op.data);
        else this.screen.resize(op.size);
      }
      for (const e of found.history) if (e.type === 'session.end') this.ended = e;
      this.accept(found.rest, found.next, found.end);
      if (!found.rest.length) this.end = found.end;
      await this.screen.settled();
      if (generation !== this.generation) return;
      // How long the last seek took to read, and to write (bench_player).
      this.seekTiming = { read_ms: t1 - t0, write_ms: performance.now() - t1 };
      this.position = target;
      this.state = 'paused';
      this.showTime();
      if (wasPlaying) this.play();
      else say(`Paused at ${clock(target)}.`);
    } catch (e) {
      if (generation === this.generation) this.fail(e);
    }
  }

  step(deltaMs) {
    this.seek(this.position + deltaMs);
  }

  fail(e) {
    this.playing = false;
    clearTimeout(this.timer);
    this.state = 'error';
    say(sentence(e && e.message ? e.message : String(e)), true);
  }

  showTime() {
    const slider = $('position');
    if (!this.dragging) slider.value = String(Math.round(this.position));
    const shown = this.dragging ? Number(slider.value) : this.position;
    const text = `${clock(shown)} / ${clock(this.duration)}`;
    $('time').textContent = text;
    slider.setAttribute('aria-valuetext', text);
  }
}

function wire(player) {
  $('play').addEventListener('click', () => player.toggle());
  $('speed').addEventListener('change', (e) => {
    player.speed = Number(e.target.value) || 1;
  });
  $('skip-idle').addEventListener('change', (e) => {
    player.skipIdle = e.target.checked;
  });
  const slider = $('position');
  slider.addEventListener('input', () => {
    player.dragging = true;
    player.showTime();
  });
  slider.addEventListener('change', () => {
    player.dragging = false;
    player.seek(Number(slider.value));
  });
  // Space and the arrows work wherever the focus is but in the speed choice;
  // handled here alone (a focused button or the slider would act too).
  const mine = (e) => !(e.target instanceof HTMLSelectElement) && !e.altKey &&
    !e.ctrlKey && !e.metaKey && [' ', 'ArrowLeft', 'ArrowRight'].includes(e.key);
  document.addEventListener('keydown', (e) => {
    if (!mine(e)) return;
    e.preventDefault();
    e.stopPropagation();
    if (e.repeat && e.key === ' ') return;
    if (e.key === ' ') player.toggle();
    else player.step(e.key === 'ArrowLeft' ? -STEP_MS : STEP_MS);
  }, true);
  document.addEventListener('keyup', (e) => {
    if (mine(e)) e.preventDefault();
  }, true);
}

async function main() {
  const sid = recordingId();
  if (sid === null) {
    say('This page plays a recording: /web/player/<id>. Choose one on the Recordings page.', true);
    return;
  }
  if (!requireSession()) return;
  mountHeader('recordings');
  if (globalThis.teleconchXtermMissing) {
    say(sentence(globalThis.teleconchXtermMissing), true);
    $('player').dataset.state = 'error';
    return;
  }
  let source;
  let info;
  try {
    source = new Source(await clusterName(), sid);
    info = await source.info();
  } catch (e) {
    say(sentence(e.message || String(e)), true);
    $('player').dataset.state = 'error';
    return;
  }
  const r = info.recording;
  const title = `${r.login}@${r.node}`;
  $('what').textContent = `${r.user}: ${title}`;
  document.title = `recording of ${title}`;
  installConstructableStyles(document);
  const term = new Terminal({
    cols: r.cols || 80,
    rows: r.rows || 24,
    disableStdin: true,
    cursorBlink: false,
    fontFamily: 'ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace',
    fontSize: 14,
    scrollback: 1000,
  });
  term.open($('terminal'));
  const player = new Player(term, source, info);
  window.teleconchPlayer = player; // for tests and the curious
  $('position').max = String(info.duration_ms);
  $('controls').hidden = false;
  $('keys').hidden = false;
  wire(player);
  await player.seek(0);
  say(`Ready: ${clock(info.duration_ms)}${r.complete ? '' : ' so far (still uploading)'}. ` +
    'Press Play or the space bar.');
  $('play').focus();
}

main();
