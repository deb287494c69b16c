"""Figures of a bench run: one table row per figure (ours, the baseline, the ratio),
written to JSON, and compared with an earlier run's JSON."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "latest.json"


@dataclass
class Row:
    measure: str
    ours: float
    baseline: float | None  # the OpenSSH jump host's figure in the same run
    unit: str
    better: str = "higher"  # or "lower": which way the ratio should go

    @property
    def ratio(self) -> float | None:
        if self.baseline in (None, 0):
            return None
        return self.ours / self.baseline


@dataclass
class Figures:
    """Everything a run measured: the summary rows and the detail per bench."""

    rows: list[Row] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)

    def add(
        self,
        measure: str,
        ours: float,
        baseline: float | None,
        unit: str,
        better: str = "higher",
    ) -> None:
        self.rows.append(Row(measure, ours, baseline, unit, better))

    def print_table(self) -> None:
        print("\nSUMMARY (teleconch vs OpenSSH sshd as jump host, same run)")
        print(f"{'measure':46} {'teleconch':>11} {'sshd-jump':>11} {'ratio':>7}  unit")
        for r in self.rows:
            base = f"{r.baseline:11.2f}" if r.baseline is not None else f"{'-':>11}"
            rat = f"{r.ratio:6.2f}x" if r.ratio is not None else f"{'-':>7}"
            print(f"{r.measure:46} {r.ours:11.2f} {base} {rat}  {r.unit}")

    def as_json(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "args": args,
            "figures": {
                r.measure: {
                    "teleconch": r.ours,
                    "sshd-jump": r.baseline,
                    "ratio": r.ratio,
                    "unit": r.unit,
                    "better": r.better,
                }
                for r in self.rows
            },
            "detail": self.detail,
        }

    def write(self, path: Path, args: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.as_json(args), indent=2, default=str) + "\n")
        print(f"\nfigures written to {path}")


def compare(previous: Path, current: dict[str, Any]) -> None:
    """Each figure's change since ``previous`` (a file this module wrote)."""
    try:
        old = json.loads(previous.read_text())["figures"]
    except (OSError, ValueError, KeyError) as e:
        print(f"\ncannot compare with {previous}: {e}")
        return
    print(f"\nCHANGE since {previous} (teleconch figure; ratio to sshd-jump)")
    for measure, new in current["figures"].items():
        was = old.get(measure)
        if was is None:
            print(f"  {measure:46} new: {new['teleconch']:.2f} {new['unit']}")
            continue
        a, b = was["teleconch"], new["teleconch"]
        change = f"{(b - a) / a * 100:+6.1f}%" if a else "   n/a"
        ratios = ""
        if was.get("ratio") is not None and new.get("ratio") is not None:
            ratios = f"  ratio {was['ratio']:.2f}x -> {new['ratio']:.2f}x"
        print(f"  {measure:46} {a:10.2f} -> {b:10.2f} {change}{ratios}")
