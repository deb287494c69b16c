"""The role rules stand alone: the proxy imports them without the auth server."""

from __future__ import annotations

import subprocess
import sys

# ``cryptography`` imports bcrypt itself when it can (for encrypted OpenSSH
# keys), so the check makes bcrypt unimportable rather than looking for it.
CHECK = """
import sys
sys.modules["bcrypt"] = None  # any `import bcrypt` now fails
import teleconch.auth.rbac
loaded = ("teleconch.auth.server", "teleconch.auth.login")
print(sorted(m for m in loaded if m in sys.modules))
"""


def test_importing_rbac_needs_neither_bcrypt_nor_the_auth_server() -> None:
    """``teleconch.auth.rbac`` (built-in roles, login expansion) loads where
    bcrypt cannot be imported, and without ``teleconch.auth.server`` or the
    password module, so a proxy need not carry them."""
    out = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
