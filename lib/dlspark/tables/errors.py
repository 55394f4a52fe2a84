"""Errors of the table layer."""
from __future__ import annotations


class TableError(RuntimeError):
    """A table cannot be read or written; the message says what to change."""


class TableConflictError(TableError):
    """Another writer committed to the Delta table between this write's snapshot and its commit."""
