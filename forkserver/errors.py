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


# --- One walredo child connection (issue 5, child protocol): forkserver.process ---


class ProcessBroken(ForkServerError):
    """The walredo child's stream is unusable: the child died or closed it (EOF, reset), or it sent
    something this side cannot parse or match to a request. Every request pending on that process fails
    with this error and every later one too. Not the request's fault: retrying on a fresh process may
    succeed."""


class ProcessClosed(ProcessBroken):
    """The walredo process was closed on purpose by this side (``close()``/``aclose()``, e.g. idle quiesce
    or shutdown). A subclass of :class:`ProcessBroken` so a request that raced the close is retried."""


class RedoFailed(ForkServerError):
    """The walredo child answered a typed error for this request: deterministic, not to be retried, and
    the process stays usable.

    ``code`` is the child protocol's error code (``"unsupported-record"``, ``"invalid-record"``,
    ``"block-not-referenced"``, ``"invalid-page"``, ``"missing-compression-library"``, ``"bad-request"``,
    ``"unsupported-pg-version"``, ``"internal"``); ``message`` is for humans."""

    def __init__(self, code: str, message: str = ""):
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
