"""The auth service: the cluster's CAs, users, roles, tokens and audit log."""
