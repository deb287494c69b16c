"""The whole probe corpus: deterministic for a seed, a few hundred cases."""

from __future__ import annotations

import random
from collections import Counter

from tests.hostile.cases import Case
from tests.hostile.corpus_amp import amp_cases, plain_to_tls_cases
from tests.hostile.corpus_http import http_cases
from tests.hostile.corpus_ssh import ssh_pre_kex_cases
from tests.hostile.corpus_ssh_secure import ssh_secure_cases
from tests.hostile.corpus_web import web_cases

SEED = 4253  # RFC 4253; any fixed number keeps the random inputs the same


def corpus(seed: int = SEED) -> list[Case]:
    rng = random.Random(seed)
    cases = (
        ssh_pre_kex_cases(rng)
        + ssh_secure_cases(rng)
        + amp_cases(rng)
        + plain_to_tls_cases(rng)
        + http_cases(rng)
        + web_cases(rng)
    )
    duplicates = [cid for cid, n in Counter(c.id for c in cases).items() if n > 1]
    assert not duplicates, f"case ids must be unique: {duplicates}"
    return cases
