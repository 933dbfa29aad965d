"""The error hierarchy of the parent side, split by who is at fault. All derive from ``ForkServerError``.

- Our caller's fault: ``UsageError`` (wrong state), ``InvalidTenantId`` and other ``ValueError``s (bad
  arguments, raised before any I/O).
- The peer broke or went away: ``ControlProtocolError`` / ``TemplateUnavailable`` (the template; its
  ``SpawnTimeout`` is also a ``TimeoutError``),
  ``ProcessBroken`` / ``ProcessClosed`` (a walredo child's stream; retriable on a new process),
  ``RedoProcessFailed`` (broke on every retry), ``RedoTimeout``.
- The peer refused, deterministically: ``SpawnRefused`` (template), ``RedoFailed`` (redo engine).
- Lifecycle outcomes: ``CellClosed`` / ``InitAborted`` (:class:`forkserver.OnceCell`), ``ManagerClosed``.
"""


class ForkServerError(Exception):
    """Base class of every error this package raises on purpose."""


class CellClosed(ForkServerError):
    """The once-cell was closed: it will never hold a value again."""


class InitAborted(ForkServerError):
    """The attempt this caller was waiting on ended cancelled (its factory raised CancelledError)."""


# --- Template fork server: forkserver.client / control / fdpass / template ---


class TemplateError(ForkServerError):
    """Base class of the template fork server's errors."""


class TemplateUnavailable(TemplateError):
    """The template cannot serve this request: it is not running, died, is restarting past the caller's
    deadline, did not answer in time, or the client was closed. Retrying later (on a launched client,
    after the restart) may succeed."""


class SpawnTimeout(TemplateUnavailable, TimeoutError):
    """A spawn's deadline passed (the caller's ``timeout`` or the client's ``spawn_timeout``) before the
    template answered or came back. Both a :class:`TemplateUnavailable` (retriable later) and a
    ``TimeoutError``, so ``except TimeoutError`` and ``asyncio.timeout`` habits catch it too."""


class SpawnRefused(TemplateError):
    """The template answered a request with a typed refusal (its fault or ours, but well-formed).

    ``code`` is a short machine-readable string (e.g. ``"invalid-tenant"``, ``"invalid-options"``,
    ``"missing-fd"``, ``"fork-failed"``); ``message`` is for humans."""

    def __init__(self, code: str, message: str = ""):
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message


class ControlProtocolError(TemplateError):
    """The peer on the control socket broke the protocol (bad frame, bad fds, failed authentication).

    ``code`` is a short machine-readable string (e.g. ``"frame-too-large"``, ``"bad-fds"``,
    ``"auth-failed"``); ``request_id`` names the request it concerns when known. The connection is not
    trustworthy afterwards unless the raiser says otherwise."""

    def __init__(self, code: str, message: str = "", request_id: "int | None" = None):
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.request_id = request_id


#: The name :class:`ControlProtocolError` had before the child protocol got an error of the same name
#: (``walredo_template.protocol.ProtocolError``); kept because ``forkserver.ProtocolError`` is public API.
ProtocolError = ControlProtocolError


class InvalidTenantId(ForkServerError, ValueError):
    """A tenant id is not 32 lowercase hex characters, optionally followed by ``-`` and 4 hex characters."""


# --- WalRedoManager: forkserver.manager ---


class UsageError(ForkServerError):
    """Our caller misused an object: e.g. a manager used before ``start()``/``async with``."""


class ManagerClosed(ForkServerError):
    """The WalRedoManager is closed (or closed while the request waited): no request will be served."""


class RedoTimeout(ForkServerError, TimeoutError):
    """A walredo request exceeded ``request_timeout``; its process was killed and is replaced on next use."""


class RedoProcessFailed(ForkServerError):
    """The tenant's walredo process broke on every try (``retries`` + 1), or none could be started."""


class RedoTemplateUnavailable(RedoProcessFailed, TemplateUnavailable):
    """No walredo process could be started because the template is unavailable (down, restarting,
    reconnecting, stuck). Both a :class:`RedoProcessFailed` (what ``request_redo`` documents) and a
    :class:`TemplateUnavailable` (what it really is); the template's own error is its ``__cause__``."""


# --- One walredo child connection (child protocol): forkserver.process ---


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
