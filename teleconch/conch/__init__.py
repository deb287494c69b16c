"""Everything teleconch adds to Twisted Conch, one module per concern.

- `wire`: strict SSH wire helpers and signature checks.
- `certs`: OpenSSH certificates: parsing and the user/host checks.
- `userauth_server`, `userauth_client`: ``ssh-userauth`` with certificates.
- `hostcert`: presenting a host certificate, and checking a node's.
- `ciphers`, `transport`: AEAD ciphers, strict KEX, the finished transports.
- `guard`, `limits`: malformed-message guard; grace time and caps.
- `flow`: flow-controlled connection and channels.
- `agent`: an ssh-agent client that handles certificates.
- `client`: a finished SSH client that logs in to a node with a certificate.
"""
