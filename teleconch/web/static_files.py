"""The web UI's static files, read once at start and served from memory.

There is no file system behind a request: a name is looked up in a table of
the files that were there at start, so no listing, traversal or odd byte
(NUL, invalid UTF-8) can reach ``open`` or ``stat``; anything else is the
API's JSON 404.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib import resources as importlib_resources
from pathlib import Path

import attrs
from twisted.web.resource import Resource
from twisted.web.server import Request

from teleconch.web.http import error_body

WEB_DIR = Path(str(importlib_resources.files("teleconch.web")))
STATIC_DIR = WEB_DIR / "static"
#: Where ``npm ci`` in teleconch/web installs xterm.js (package.json pins it).
NODE_MODULES = WEB_DIR / "node_modules"

#: The front-end packages' files the pages use, by the name they are served
#: under (below /web/static/) and where npm puts them; nothing else of
#: node_modules is served.
VENDOR_FILES = {
    "vendor/xterm/xterm.mjs": "@xterm/xterm/lib/xterm.mjs",
    "vendor/xterm/xterm.css": "@xterm/xterm/css/xterm.css",
    "vendor/xterm/addon-fit.mjs": "@xterm/addon-fit/lib/addon-fit.mjs",
}
XTERM_MISSING = (
    "the terminal library (xterm.js) is not installed on this proxy: run npm ci "
    "in teleconch/web, or scripts/start, then restart the proxy"
)

# What is served in place of a missing file: modules that import cleanly and
# say what is wrong (a flag the console page can read; a constructor that
# throws the message), so the page can show it rather than fail to load.
_STAND_INS = {
    "vendor/xterm/xterm.mjs": (
        f"export const XTERM_MISSING = {json.dumps(XTERM_MISSING)};\n"
        "globalThis.teleconchXtermMissing = XTERM_MISSING;\n"
        "export class Terminal { constructor() { throw new Error(XTERM_MISSING); } }\n"
    ),
    "vendor/xterm/addon-fit.mjs": (
        f"export const XTERM_MISSING = {json.dumps(XTERM_MISSING)};\n"
        "globalThis.teleconchXtermMissing = XTERM_MISSING;\n"
        "export class FitAddon { constructor() { throw new Error(XTERM_MISSING); } }\n"
    ),
    "vendor/xterm/xterm.css": f"/* {XTERM_MISSING} */\n",
}

_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".mjs": b"text/javascript; charset=utf-8",
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
                path.read_bytes(), _type_of(path.name)
            )
    return files


def _type_of(name: str) -> bytes:
    return _TYPES.get(Path(name).suffix.lower(), b"application/octet-stream")


def read_vendor_files(
    node_modules: Path,
) -> tuple[dict[str, StaticFile], list[str]]:
    """The `VENDOR_FILES` from ``node_modules``, and the names of any missing
    (served as stand-ins that say so).

    Blocking: call it off the reactor, once.
    """
    files, missing = {}, []
    for name, installed in VENDOR_FILES.items():
        path = node_modules / installed
        if path.is_file():
            body = path.read_bytes()
        else:
            missing.append(name)
            body = _STAND_INS[name].encode("utf-8")
        files[name] = StaticFile(body, _type_of(name))
    return files, missing


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
