"""Errors the client commands report to the person, as they are."""

from __future__ import annotations


class UsageError(Exception):
    """Something the person must change; the text says what."""
