"""Fixtures of the coordinator tests: ``serve`` starts a real coordinator on loopback."""

from .test_wire import serve  # noqa: F401  (a fixture, found by name)
