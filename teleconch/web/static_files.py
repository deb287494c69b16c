"""The web UI's static files, read once at start and served from memory.

There is no file system behind a request: a name is looked up in a table of
the files that were there at start, so no listing, traversal or odd byte
(NUL, invalid UTF-8) can reach ``open`` or ``stat``; anything else is the
API's JSON 404.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources as importlib_resources
from pathlib import Path

import attrs
from twisted.web.resource import Resource
from twisted.web.server import Request

from teleconch.web.http import error_body

STATIC_DIR = Path(str(importlib_resources.files("teleconch.web") / "static"))

_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".json": b"application/json",
    ".map": b"application/json",
    ".svg": b"image/svg+xml",
    ".png": b"image/png",
    ".ico": b"image/x-icon",
    ".woff2": b"font/woff2",
}


@attrs.frozen
class StaticFile:
    body: bytes
    content_type: bytes


def read_static_files(directory: Path) -> dict[str, StaticFile]:
    """Every regular file under ``directory`` by its relative POSIX path.

    Blocking: call it off the reactor, once.  Hidden files are left out.
    """
    files = {}
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if path.is_file():
            files[relative.as_posix()] = StaticFile(
                path.read_bytes(),
                _TYPES.get(path.suffix.lower(), b"application/octet-stream"),
            )
    return files


class StaticFiles(Resource):
    """``/web/static/<name>``: GET or HEAD one of the files read at start."""

    isLeaf = True

    def __init__(self, files: Mapping[str, StaticFile]) -> None:
        super().__init__()
        self._files = dict(files)

    def file(self, name: str) -> StaticFile:
        return self._files[name]

    def has(self, name: str) -> bool:
        return name in self._files

    def render(self, request: Request) -> bytes:
        if request.method not in (b"GET", b"HEAD"):
            return error_body(request, 405, "method not allowed")
        try:
            name = b"/".join(request.postpath or []).decode("utf-8")
        except UnicodeDecodeError:
            name = ""
        found = self._files.get(name)
        if found is None:
            return error_body(request, 404, "not found")
        request.setHeader(b"content-type", found.content_type)
        return found.body
