"""The error hierarchy of the parent side, split by who is at fault.

- ``UsageError``: our caller misused an object (wrong state, bad argument).
- ``PeerError``: the other side (template, child) broke the protocol or went away.
- ``CellClosed`` / ``InitAborted``: :class:`forkserver.OnceCell` outcomes.
"""


class ForkServerError(Exception):
    """Base class of every error this package raises on purpose."""


class CellClosed(ForkServerError):
    """The once-cell was closed: it will never hold a value again."""


class InitAborted(ForkServerError):
    """The attempt this caller was waiting on ended cancelled (its factory raised CancelledError)."""
