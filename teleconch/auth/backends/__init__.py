"""Storage backends behind the Store interface."""
