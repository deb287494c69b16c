"""The replay suite's world: the proxy tests' cluster, sshd node and alice, with
short login grace, so connections that never log in end within a case's budget."""

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_twisted

from tests.test_proxy import World, make_world


@pytest_twisted.async_yield_fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with make_world(tmp_path, {"proxy_service": {"login_grace_time": "5s"}}) as w:
        yield w
