"""The browser's player on a 100 MB recording: how long a seek takes to settle.

The cluster runs in this process on 127.0.0.1 (the auth service with its
SQLite store, the proxy with the web UI, as in the interop tests); the
browser is a real Chromium (Debian's /usr/bin/chromium, through Playwright)
on /web/player/<sid>.  The recording is made synthetically (base64 noise
that hardly compresses, a frame every 100 ms, a full-screen clear every 24
frames: tests/recordings.py) and uploaded through the auth service's own
`Recordings`, as a proxy's uploader would.

1. The proxy's decoding of one range (the events route's work, done on the
   thread pool): the largest range of noise and of ``yes`` output, in ms.
2. Seeks: the Position slider let go at 10 points across the recording;
   from the change to the screen settled (the rebuild written and processed
   by xterm.js, one animation frame after), timed in the page, split into
   reading (the requests) and writing (xterm.js); and the bytes the page
   fetched for each.

Usage: PYTHONPATH=. python bench/bench_player.py [--size-mb 100] [--points 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from playwright.async_api import Browser
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import react

from teleconch.web.recording_ranges import MAX_RANGE, Range, decode_range
from tests import recordings as rec
from tests.browser import BrowserThread, code_for, open_page
from tests.harness import sign_up, start_cluster

SEEK_AND_SETTLE = """
async (ms) => {
  const player = window.teleconchPlayer;
  const slider = document.getElementById('position');
  const t0 = performance.now();
  slider.value = String(ms);
  slider.dispatchEvent(new Event('change', { bubbles: true }));
  await new Promise((resolve) => {
    const check = () => {
      const state = document.getElementById('player').dataset.state;
      if (state !== 'seeking' && player.screen.pending === 0) resolve();
      else requestAnimationFrame(check);
    };
    requestAnimationFrame(check);
  });
  await new Promise((resolve) => requestAnimationFrame(resolve));
  return performance.now() - t0;
}
"""


def decode_times() -> dict[str, float]:
    """ms to decode the largest range of two kinds of output (best of 5)."""
    noise = list(rec.large_recording("n", "n", MAX_RANGE))[1:]
    yes = rec.frames([rec.out(i, b"y\n" * 8000) for i in range(4000)])
    answer = {}
    for name, frames in (("noise", noise), ("yes", yes)):
        taken, used = [], 0
        for f in frames:
            if used + len(f) > MAX_RANGE:
                break
            taken.append(f)
            used += len(f)
        r = Range(tuple(taken), 0, used, used, True)
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            decode_range(r, "bench")
            best = min(best, time.perf_counter() - t0)
        answer[name] = best * 1000
    return answer


async def bench(size_mb: int, points: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-player-"))
    cluster = await start_cluster(tmp / "data")
    browser = BrowserThread()
    try:
        alice = await sign_up(cluster, "alice")
        auth = cluster.service.auth
        assert auth is not None and auth.server is not None
        t0 = time.perf_counter()
        stream = rec.large_recording("big", "alice", size_mb * 1024 * 1024)
        frames = 0

        def counted() -> Any:
            nonlocal frames
            for f in stream:
                frames += 1
                yield f

        stored = await rec.store(
            auth.server.recordings, "big", "alice", counted(), 0, complete=False
        )
        duration = (frames - 1) * rec.FRAME_GAP_MS
        await auth.server.recordings.complete("testhost", "big", duration)
        upload_s = time.perf_counter() - t0
        print(f"stored {stored / 1e6:.1f} MB in {frames} frames "
              f"({duration / 1000:.0f} s of session) in {upload_s:.1f} s", flush=True)  # fmt: skip
        await deferToBrowserStart(browser)
        base = f"https://127.0.0.1:{cluster.web_addr.port}"
        cluster.clock.advance(30)
        code = code_for(cluster)(alice.totp_secret)
        at = [
            duration * k // (points * 100) * 100 + rec.FRAME_GAP_MS
            for k in range(points)
        ]
        at = [at[i] for i in (5, 0, 9, 2, 7, 1, 8, 3, 6, 4) if i < len(at)] or at

        async def flow(b: Browser) -> dict[str, Any]:
            async with open_page(b) as (page, _log):
                fetched: list[int] = []

                async def count(response: Any) -> None:
                    if "/recordings/" in response.url:
                        fetched.append(len(await response.body()))

                page.on("response", count)
                await page.goto(base + "/web/player/big")
                await page.wait_for_url("**/web/login?next=*")
                await page.get_by_label("Username").fill("alice")
                await page.get_by_label("Password").fill(alice.password)
                await page.get_by_label("One-time code").fill(code)
                await page.get_by_role("button", name="Log in").click()
                await page.wait_for_url("**/web/player/big")
                await page.wait_for_selector("#player[data-state='paused']")
                results = []
                for ms in at:
                    before = sum(fetched)
                    took = await page.evaluate(SEEK_AND_SETTLE, ms)
                    await page.wait_for_timeout(50)  # the last responses counted
                    text = await page.locator(".xterm-rows").inner_text()
                    n = ms // rec.FRAME_GAP_MS - 1
                    split = await page.evaluate("window.teleconchPlayer.seekTiming")
                    results.append({
                        "at_s": ms / 1000, "ms": took, **split,
                        "fetched_kb": (sum(fetched) - before) / 1024,
                        "right_screen": f"AT-FRAME-{n:06d}" in text,
                    })  # fmt: skip
                return {"seeks": results}

        out = await browser.run(flow)
        out.update(stored_mb=stored / 1e6, frames=frames, upload_s=upload_s)
        return out
    finally:
        if browser.browser is not None:
            browser.stop()
        await cluster.stop()


def deferToBrowserStart(browser: BrowserThread) -> Deferred[None]:
    """Start Chromium (it blocks for a second or two) off the reactor."""
    from twisted.internet.threads import deferToThread

    return deferToThread(browser.start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=100)
    ap.add_argument("--points", type=int, default=10)
    args = ap.parse_args()

    print("1. decoding one range of", MAX_RANGE // 1024, "KiB stored (best of 5)")
    for name, ms in decode_times().items():
        print(f"   {name:6} {ms:6.2f} ms")

    async def run(_reactor: Any) -> None:
        out = await bench(args.size_mb, args.points)
        seeks = out["seeks"]
        print(f"\n2. seeks in a {out['stored_mb']:.0f} MB recording, slider to screen "
              "settled, in the page")  # fmt: skip
        print(f"   {'at s':>8} {'ms':>8} {'read ms':>8} {'write ms':>8} "
              f"{'fetched KiB':>12}  right screen")  # fmt: skip
        for s in seeks:
            print(f"   {s['at_s']:8.1f} {s['ms']:8.1f} {s['read_ms']:8.1f} "
                  f"{s['write_ms']:8.1f} {s['fetched_kb']:12.0f}  "
                  f"{s['right_screen']}")  # fmt: skip
        times = [s["ms"] for s in seeks]
        print(f"\nSUMMARY: seek p50 {statistics.median(times):.0f} ms, max "
              f"{max(times):.0f} ms; fetched per seek p50 "
              f"{statistics.median(s['fetched_kb'] for s in seeks):.0f} KiB, max "
              f"{max(s['fetched_kb'] for s in seeks):.0f} KiB; all on the right "
              f"screen: {all(s['right_screen'] for s in seeks)}")  # fmt: skip
        print(json.dumps(out))

    react(lambda r: ensureDeferred(run(r)), [])


if __name__ == "__main__":
    main()
