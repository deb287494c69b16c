"""Writing secrets to disk: private directories, atomic 0600 files."""

from __future__ import annotations

import os
import pathlib
import secrets


def ensure_private_directory(directory: pathlib.Path) -> None:
    """Create `directory` (and parents) and make it 0700: it holds secrets."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)


def write_private_file(path: pathlib.Path, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` atomically with `data`, never readable by others.

    The temporary file is created 0600 with O_EXCL in the same directory, so a
    crash leaves either the old file or the new one, and no window exists in
    which the secret is world-readable.
    """
    directory = path.parent
    tmp = directory / f".{path.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
