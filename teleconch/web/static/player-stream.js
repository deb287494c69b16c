// Where the player's bytes come from: the recording's web API
// (teleconch/web/recordings_api.py), read in ranges of whole frames, never
// whole.  And what to write to rebuild the screen at a time T: the output
// from the last full-screen clear before T (or at most REBUILD_BYTES of it),
// found by walking back from T's frame through the index (events?ms=: a
// seek and its range in one call), one frame and then in longer steps.

import { api } from '/web/static/app.js';

// How much output before a time is enough to rebuild the screen at it,
// when no full-screen clear comes sooner.
export const REBUILD_BYTES = 512 * 1024;
// The most stored bytes a walk back reads in one step (a burst of frames
// recorded in the same millisecond can be more); past it the walk stops.
const STEP_LIMIT = 2 * REBUILD_BYTES;

const ESC = 0x1b;
// After ESC: "[2J" (erase the screen), "c" (reset), "[?1049h" (the
// alternate screen, which a full-screen program then draws).
const CLEARS = [[0x5b, 0x32, 0x4a], [0x63], [0x5b, 0x3f, 0x31, 0x30, 0x34, 0x39, 0x68]];

function bytesOf(base64) {
  const text = atob(base64);
  const out = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i += 1) out[i] = text.charCodeAt(i);
  return out;
}

function decoded(event) {
  return event.type === 'print' ? { ms: event.ms, type: 'print', data: bytesOf(event.data) } : event;
}

// Where the last full-screen clear in `data` starts, or -1.
export function lastClear(data) {
  for (let i = data.length - 2; i >= 0; i -= 1) {
    if (data[i] !== ESC) continue;
    for (const tail of CLEARS) {
      if (tail.every((b, j) => data[i + 1 + j] === b)) return i;
    }
  }
  return -1;
}

export function printed(events) {
  let n = 0;
  for (const e of events) if (e.type === 'print') n += e.data.length;
  return n;
}

// A size event: the session's start or a resize.
export function sizeOf(event) {
  if ((event.type === 'resize' || event.type === 'session.start') &&
      Number.isInteger(event.cols) && Number.isInteger(event.rows) &&
      event.cols > 0 && event.rows > 0) {
    return { cols: event.cols, rows: event.rows };
  }
  return null;
}

export class Source {
  constructor(cluster, sid) {
    this.base = `/v1/webapi/sites/${encodeURIComponent(cluster)}/recordings/` +
      encodeURIComponent(sid);
  }

  info() {
    return api('GET', this.base);
  }

  // The events of whole frames from `offset` (a frame boundary), or from the
  // frame holding `ms` (then the answer says that frame's offset and ms);
  // up to `maxBytes` stored bytes, stopping short of offset `until`.
  async range({ offset, ms, maxBytes, until }) {
    const q = new URLSearchParams();
    if (ms !== undefined) q.set('ms', String(Math.max(0, Math.floor(ms))));
    else q.set('offset', String(offset));
    if (maxBytes) q.set('max_bytes', String(Math.max(1, Math.floor(maxBytes))));
    if (until !== undefined) q.set('until', String(until));
    const r = await api('GET', `${this.base}/events?${q}`);
    return {
      offset: r.offset === undefined ? offset : r.offset,
      ms: r.ms,
      events: r.events.map(decoded),
      next: r.next_offset,
      end: r.end,
    };
  }

  // The frames before the one at `cursor`, from the frame `back` ms before
  // it (at least the one frame before it): {offset, ms, events, size}, or
  // null at the start.  Stops at STEP_LIMIT stored bytes (size says more).
  async before(cursor, back) {
    if (cursor.offset === 0) return null;
    const first = cursor.ms > 0
      ? await this.range({ ms: Math.max(0, cursor.ms - back), until: cursor.offset })
      : await this.range({ offset: 0, until: cursor.offset });
    if (first.offset >= cursor.offset) return null;
    const size = cursor.offset - first.offset;
    const events = first.events.slice();
    let at = first.next;
    while (at < cursor.offset && size <= STEP_LIMIT) {
      const r = await this.range({ offset: at, until: cursor.offset });
      for (const e of r.events) events.push(e);
      if (r.next <= at) break;
      at = r.next;
    }
    return { offset: first.offset, ms: first.ms || 0, events, size };
  }

  // What to write to show the screen at `ms`, and what plays on from there:
  // {history, rest, next, end}.  `history` is every event up to `ms` from
  // the frame where the rebuild starts; `rest` the events after `ms` of the
  // frame holding it; `next` the offset the range after it starts at.
  async screenAt(ms) {
    // The frame holding `ms` alone: playing on fetches the ranges after it.
    const first = await this.range({ ms, maxBytes: 1 });
    let split = first.events.findIndex((e) => e.ms > ms);
    if (split < 0) split = first.events.length;
    let history = first.events.slice(0, split);
    let cursor = { offset: first.offset, ms: first.ms };
    let bytes = printed(history);
    let clear = history.some((e) => e.type === 'print' && lastClear(e.data) >= 0);
    let rate = 0; // output bytes per ms of the frames read so far
    while (!clear && bytes < REBUILD_BYTES) {
      // One frame back first; then as far back as the rest of the budget
      // goes at the rate seen, so a walk takes a few steps, not one a frame.
      const step = rate ? Math.max(1, Math.floor((REBUILD_BYTES - bytes) / rate)) : 1;
      let span = await this.before(cursor, step);
      if (span && step > 1 && span.size > STEP_LIMIT) span = await this.before(cursor, 1);
      if (!span || span.size > STEP_LIMIT) break;
      const got = printed(span.events);
      history = span.events.concat(history);
      bytes += got;
      rate = got / Math.max(1, cursor.ms - span.ms);
      clear = span.events.some((e) => e.type === 'print' && lastClear(e.data) >= 0);
      cursor = { offset: span.offset, ms: span.ms };
    }
    return { history, rest: first.events.slice(split), next: first.next, end: first.end };
  }
}

// The writes that rebuild a screen from `history`: from its last
// full-screen clear (or its start), at the size in effect there.
// {ms, ops: [{size}|{data}]}: where it starts, and the size first (null if
// history does not say it).
export function rebuildOps(history) {
  let cutEvent = 0;
  let cutAt = 0;
  for (let i = history.length - 1; i >= 0; i -= 1) {
    const e = history[i];
    const found = e.type === 'print' ? lastClear(e.data) : -1;
    if (found >= 0) {
      cutEvent = i;
      cutAt = found;
      break;
    }
  }
  let size = null;
  for (let i = 0; i < cutEvent; i += 1) size = sizeOf(history[i]) || size;
  const ops = [{ size }];
  for (let i = cutEvent; i < history.length; i += 1) {
    const e = history[i];
    if (e.type === 'print') {
      ops.push({ data: i === cutEvent ? e.data.subarray(cutAt) : e.data });
    } else if (sizeOf(e)) {
      ops.push({ size: sizeOf(e) });
    }
  }
  return { ms: history.length ? history[cutEvent].ms : 0, ops };
}
