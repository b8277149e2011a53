"""fedseed: seed-only federated zeroth-order training (see README.md)."""

__version__ = "0.1.0"
