"""The web UI's pages under /web/: plain HTML read once at start, served
from memory; their scripts and styles are files of /web/static/ (the CSP
allows nothing inline).

The pages hold no secret and need no session to be served: each asks the
API, which requires the session, and goes to the login page on a 401.  The
login page is the one page with something of the request in it: where to
go after logging in (``?next=``), which the server checks here, so that a
link can only send a person on to a page of this UI, never elsewhere.
"""

from __future__ import annotations

import html
import re

from twisted.web.resource import Resource
from twisted.web.server import Request

from teleconch.web.http import ErrorResource, error_body
from teleconch.web.jsonapi import Dir
from teleconch.web.static_files import StaticFiles

HOME = "/web/nodes"
LOGIN = "/web/login"
#: The login page's placeholder for where to go next.
NEXT_MARK = b"__NEXT__"
_SAFE_PATH = re.compile(r"/web/[A-Za-z0-9._~/-]{0,1000}")

#: The pages, by their path under /web/, and their file in static/ (served
#: only if that file is there: console.html is the web terminal's).
PAGES = {
    b"invite": "invite.html",
    b"nodes": "nodes.html",
    b"sessions": "sessions.html",
    b"account": "account.html",
    b"console": "console.html",
    b"recordings": "recordings.html",
    b"player": "player.html",
}


def safe_next(value: str | None) -> str:
    """Where to go after logging in: ``value`` if it is a page of this UI.

    Only a path under /web/ of plain characters, without empty, ``.`` or
    ``..`` segments (which a browser would resolve out of /web/, even
    percent-encoded), and not the login page itself; anything else (an
    absolute URL, ``//host``, a backslash) is the home page.
    """
    if not value or not _SAFE_PATH.fullmatch(value):
        return HOME
    segments = value.split("/")[2:]
    if any(s in ("", ".", "..") for s in segments[:-1]) or segments[-1] in (".", ".."):
        return HOME
    if value.rstrip("/") == LOGIN:
        return HOME
    return value


class Page(Resource):
    """One static HTML page, whatever the rest of the path (a token, a node)."""

    isLeaf = True

    def __init__(self, html: bytes) -> None:
        super().__init__()
        self._html = html

    def render(self, request: Request) -> bytes:
        if request.method not in (b"GET", b"HEAD"):
            return error_body(request, 405, "method not allowed")
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return self.body(request)

    def body(self, request: Request) -> bytes:
        return self._html


class LoginPage(Page):
    """/web/login: the page, told where to go next (checked by `safe_next`)."""

    def body(self, request: Request) -> bytes:
        asked = (request.args or {}).get(b"next", [b""])[0]
        target = safe_next(asked.decode("utf-8", "replace"))
        return self._html.replace(
            NEXT_MARK, html.escape(target, quote=True).encode("utf-8")
        )


class Redirect(Resource):
    """A 302 to one fixed path of this site."""

    isLeaf = True

    def __init__(self, to: str) -> None:
        super().__init__()
        self._to = to.encode("ascii")

    def render(self, request: Request) -> bytes:
        request.setResponseCode(302)
        request.setHeader(b"location", self._to)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"See " + self._to + b"\n"


class WebDir(Dir):
    """/web: its pages; /web and /web/ go to the home page."""

    def render(self, request: Request) -> bytes:
        return Redirect(HOME).render(request)


def web_tree(static: StaticFiles) -> Resource:
    """/web/ and everything under it."""
    web = WebDir()
    web.putChild(b"", Redirect(HOME))
    web.putChild(b"static", static)
    if static.has("login.html"):
        web.putChild(b"login", LoginPage(static.file("login.html").body))
    for path, name in PAGES.items():
        if static.has(name):
            web.putChild(path, Page(static.file(name).body))
    if not static.has("console.html"):
        web.putChild(
            b"console",
            ErrorResource(503, "the web terminal is not available on this proxy"),
        )
    return web
