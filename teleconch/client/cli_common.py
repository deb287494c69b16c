"""What the ``teleconch`` commands share: the current login, aligned tables."""

from __future__ import annotations

from collections.abc import Sequence

from teleconch.client.errors import UsageError
from teleconch.client.keystore import KeyStore, Profile


def require_profile(store: KeyStore) -> Profile:
    profile = store.current_profile()
    if profile is None:
        raise UsageError(
            "not logged in: run teleconch login --proxy HOST:3080 --user NAME"
        )
    return profile


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
