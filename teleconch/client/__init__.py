"""Command-line clients: teleconch (user) and teleconch-ctl (admin)."""
