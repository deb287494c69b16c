"""A tiny SSH node for the concurrency benchmark: asyncssh, one process, any number of sessions.

OpenSSH's sshd forks a process per connection and, behind MaxStartups, drops
unauthenticated connections beyond its limit: 5,000 concurrent sessions would
measure sshd's fork rate and the machine's memory for 5,000 sshd children, not
the proxy. This node is one asyncio process that trusts the cluster's user CA
(``cert-authority``) and presents the host certificate the cluster signed, as a
real node does; each session writes ``R`` and then holds until its client
closes stdin. It costs the proxy exactly what a real node costs it: the proxy
splices TCP to it and never sees inside.

Usage: python bench/tiny_node.py --port P --host-key K --user-ca CA.pub
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
from pathlib import Path
from typing import Any

import asyncssh


async def hold(process: asyncssh.SSHServerProcess[bytes]) -> None:
    process.stdout.write(b"R\n")
    try:
        while await process.stdin.read(65536):
            pass
    except (asyncssh.BreakReceived, asyncssh.TerminalSizeChanged, OSError):
        pass
    process.exit(0)


async def serve(args: argparse.Namespace, keys: list[Any], authorized: Any) -> None:
    server = await asyncssh.listen(
        "127.0.0.1",
        args.port,
        server_host_keys=keys,
        authorized_client_keys=authorized,
        process_factory=hold,
        encoding=None,
        backlog=4096,
        keepalive_interval=0,
    )
    print(f"tiny node listening on 127.0.0.1:{args.port}", flush=True)
    await server.wait_closed()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host-key", required=True)
    ap.add_argument("--user-ca", required=True)
    args = ap.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    host_key = asyncssh.read_private_key(args.host_key)
    cert = Path(f"{args.host_key}-cert.pub")
    keys: list[Any] = [host_key]
    if cert.exists():
        keys = [(host_key, asyncssh.read_certificate(str(cert)))]
    authorized = asyncssh.import_authorized_keys(
        f"cert-authority {Path(args.user_ca).read_text().strip()}\n"
    )
    try:
        asyncio.run(serve(args, keys, authorized))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
