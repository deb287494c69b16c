"""The replay suite reuses the proxy tests' world: a cluster, an sshd node, alice logged in."""

from tests.test_proxy import world  # noqa: F401  # a fixture, found by name
