"""The Auth API: every AMP command the auth service answers, in one place.

Each command is ``AuthCommand[Request, Response]``: two frozen attrs
records from which its AMP arguments and response are derived
(``teleconch.auth.wire``).  Each names the caller roles allowed to send it
(``roles``); the server enforces that before any argument is decoded.  A
caller's role comes from its TLS client certificate; a caller without one is
``ANONYMOUS`` and may only ping and join.

The commands live one area per module of this package (``cluster``, ``web``,
``nodes``, ``forwarding``, ``recordings``, ``settings``), and every name is
here: callers import the Auth API from this one place
(``from teleconch.auth import protocol as api``).
"""

from teleconch.auth.protocol.cluster import *  # noqa: F403
from teleconch.auth.protocol.common import *  # noqa: F403
from teleconch.auth.protocol.forwarding import *  # noqa: F403
from teleconch.auth.protocol.nodes import *  # noqa: F403
from teleconch.auth.protocol.recordings import *  # noqa: F403
from teleconch.auth.protocol.settings import *  # noqa: F403
from teleconch.auth.protocol.web import *  # noqa: F403
