"""Typed errors of the redo engine.

Every failure the engine can report on bad input is one of these, so a walredo child can answer it as a
typed error without dying, and the parent can tell a deterministic redo error (not retried) from a broken
process (retried). Each carries a plain message; the ones about a record name its rmgr and info.
"""


class RedoError(Exception):
    """Base class: the redo engine refused its input. Deterministic: retrying the same input fails again."""


class InvalidRecord(RedoError, ValueError):
    """The record bytes are malformed: truncated, wrong lengths, bad CRC, bad fragment ids, bad image."""


class UnsupportedRecord(RedoError):
    """A well-formed record this engine does not redo (rmgr/info not in the supported set)."""

    def __init__(self, message: str, *, rmid: int | None = None, info: int | None = None):
        super().__init__(message)
        self.rmid = rmid
        self.info = info


class BlockNotReferenced(RedoError):
    """The record does not reference the page being reconstructed."""


class InvalidPage(RedoError, ValueError):
    """The page is not a PostgreSQL 15 page this engine can work on (bad size, version, layout)."""


class MissingCompressionLibrary(RedoError):
    """A full-page image is compressed with lz4 or zstd and the Python package for it is not installed."""


class InvalidWal(RedoError, ValueError):
    """A WAL segment or page header is malformed (reader side)."""
