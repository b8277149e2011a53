"""Errors a user can cause and fix; the CLI prints them without a traceback."""

from __future__ import annotations


class FedseedError(Exception):
    """Base of every error that names a user mistake or a missing asset."""


class ConfigError(FedseedError, ValueError):
    """A setting or an argument that cannot work (says which and why)."""


class DuplicateTensorIdError(ConfigError):
    """Two trainable tensors hash to the same 32-bit stream id."""


class UnsupportedDtypeError(ConfigError):
    """A trainable tensor's dtype cannot be perturbed exactly by spec v1."""


class AssetNotFoundError(FedseedError, FileNotFoundError):
    """A model or data set that must be installed locally is missing."""


class LedgerError(FedseedError, ValueError):
    """A ledger that is malformed or does not fit the model it is applied to."""
