"""``twistd teleauth``: the auth service alone."""

from teleconch.tap import Options
from teleconch.tap import makeAuthService as makeService

__all__ = ["Options", "makeService"]
