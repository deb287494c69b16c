"""teleconch: an SSH access gateway on Twisted."""

__version__ = "0.1.0"
