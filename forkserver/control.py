"""Control protocol between a parent (``TemplateClient``) and the template: sans-IO, bytes + fds in and out.

This module never touches a socket. Each side feeds what it received (``receive_data(data, fds)``), pulls
events (``next_event()``), and asks for the bytes + fds to send (``send(msg)`` / ``data_to_send()``); the
caller does the I/O (through :mod:`forkserver.fdpass`). The template, the client and the tests share it.

Frame
-----
Every message is one frame of the fork server's framing (:mod:`walredo_template.framing`)::

    0               4                                   4 + length
    +---------------+-----------------------------------+
    | length: u32 BE| body: msgpack map {"t": type, ...} |
    +---------------+-----------------------------------+

``length`` counts the body only. It is at most :data:`MAX_FRAME` (64 KiB) once authenticated and
:data:`MAX_FRAME_UNAUTHENTICATED` (512 bytes) before, so an unauthenticated peer cannot make the template
buffer much; the parent accepts replies up to :data:`MAX_REPLY_FRAME` (1 MiB: a ``stats-reply`` lists up to
:data:`MAX_LISTED_CHILDREN` children). A larger length is fatal (the stream cannot be resynchronised): the
connection is closed.

File descriptors (SCM_RIGHTS) ride on the **first byte of the frame** that carries them: the sender passes
them to the ``sendmsg`` call that starts the frame and never coalesces that frame with earlier bytes.
A receiver attributes a batch of fds that arrived with a ``recvmsg`` chunk to the *last frame that starts in
that chunk* (Linux ends a ``recvmsg`` right after the segment carrying fds, see :mod:`forkserver.fdpass`).
Fds arriving with a chunk in which no frame starts are stray: fatal ``bad-fds``.

Messages (``t`` field; every other field listed; no other fields allowed)
-------------------------------------------------------------------------
Handshake (mutual HMAC-SHA256 over fresh nonces with the per-template 32-byte key)::

    template -> parent  {"t": "challenge", "v": 1, "nonce": bin32}                        fds: none
    parent -> template  {"t": "auth", "mac": bin32, "nonce": bin32}                        fds: none
        mac = HMAC(key, b"walredo-template/1 auth" + template_nonce + parent_nonce)
    template -> parent  {"t": "welcome", "mac": bin32, "pid": int}                         fds: none
        mac = HMAC(key, b"walredo-template/1 welcome" + parent_nonce + template_nonce)

The template sends the challenge only after the peer passed the ``SO_PEERCRED`` uid check, and reads no
request before a valid ``auth``; a wrong mac or any other message first is fatal (``auth-failed``).

Requests (parent -> template) and replies (template -> parent), after the handshake::

    {"t": "spawn", "id": int, "tenant": str, "options": map}   fds: [child_socket]   (exactly one)
    {"t": "spawned", "id": int, "pid": int}                     fds: [pidfd]          (exactly one)
    {"t": "error", "id": int | nil, "code": str, "message": str}                      fds: none
    {"t": "exited", "pid": int, "status": int}                                        fds: none
    {"t": "stderr", "pid": int, "tenant": str, "line": str}                           fds: none
    {"t": "stats", "id": int}                                                         fds: none
    {"t": "stats-reply", "id": int, "stats": map}                                     fds: none

- ``spawn``: ``child_socket`` is the child's end of a ``socketpair`` made by the parent; the template gives
  it to the forked child and closes its copy. ``tenant`` matches :data:`TENANT_RE`; ``options`` is a map of
  at most 32 str keys to nil/bool/int/float/str/bin values.
- ``spawned``: ``pid`` of the child and a pidfd for it, opened by the template before it can reap it.
- ``exited``: sent (unsolicited) to the connection whose spawn made the child, once the template reaped it;
  ``status`` is in ``os.waitstatus_to_exitcode`` convention (exit code, or ``-signal``).
- ``stderr``: (unsolicited) one line the child wrote to its stderr, to the same connection
  (:mod:`forkserver.childlog`: cut at 1,024 bytes, rate-bounded per child).
- ``error``: typed refusal of request ``id`` (nil when the id could not be read). Codes:
  ``invalid-tenant``, ``invalid-options``, ``bad-request`` (wrong type/field), ``missing-fd``,
  ``extra-fds``, ``bad-fds`` with an ``id`` (the spawn's fd is not a connected ``AF_UNIX`` stream socket:
  refused before any fork, the connection stays usable), ``fork-failed``; and, followed by a close, the
  fatal ``frame-too-large``, ``bad-fds`` (fds not attached to the start of a frame; ``id`` nil),
  ``auth-failed``.
- ``stats-reply``: ``stats`` has at least ``spawns`` (children forked so far) and ``live`` (not yet reaped).
  The template (:meth:`forkserver.template.Template.stats`) also sends ``idle`` (pool children waiting),
  ``pool_size``, ``connections``, ``pid``, ``sandbox`` (bool), ``started`` (its start, Unix time),
  ``fork_failures`` (forks that failed, on request or pre-forking), ``pool_refills`` (children pre-forked),
  ``pool_hits`` / ``pool_misses`` (spawns served by a pool child / forked on request while the pool was
  on), and ``children``: one ``[tenant, pid, started]`` array per live tenant child (``started``: the Unix
  time its spawn was answered), oldest first, at most :data:`MAX_LISTED_CHILDREN`; ``children_omitted``
  counts the rest. A parent must ignore keys it does not know.

Many requests may be in flight on one connection; replies carry the request ``id``.

Size: ~600 lines, a fifth of them this specification. The messages and their schema table, the fd
attribution of :class:`FrameDecoder` and the handshake state machine of :class:`ControlConnection` are the
three things it specifies, and each refers to the other two; the frame itself lives in
:mod:`walredo_template.framing`.
"""

from __future__ import annotations

import enum
import hmac
import math
import os
import re
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

import msgpack

from forkserver.errors import ControlProtocolError, InvalidTenantId
from forkserver.fdpass import close_fds
from forkserver.secret import KEY_SIZE, Key
from walredo_template import framing

__all__ = [
    "PROTOCOL_VERSION", "MAX_FRAME", "MAX_FRAME_UNAUTHENTICATED", "MAX_REPLY_FRAME", "MAX_LISTED_CHILDREN",
    "KEY_SIZE", "TENANT_RE",
    "Role", "State", "Challenge", "Auth", "Welcome", "Spawn", "Spawned", "ErrorReply", "Error", "Exited", "Stderr",
    "StatsRequest", "StatsReply", "BadRequest", "ControlConnection", "FrameDecoder",
    "encode", "decode", "validate_tenant", "validate_options", "OptionValue", "Options",
]

PROTOCOL_VERSION = 1
MAX_FRAME = 64 * 1024
MAX_REPLY_FRAME = 1 << 20  # what the parent accepts from the authenticated template
MAX_LISTED_CHILDREN = 8192  # children in one stats reply: ~55 bytes each, well under MAX_REPLY_FRAME
MAX_FRAME_UNAUTHENTICATED = 512
NONCE_SIZE = 32
MAX_OPTIONS = 32
TENANT_RE = re.compile(r"[0-9a-f]{32}(?:-[0-9a-f]{4})?", re.ASCII)

_AUTH_LABEL = b"walredo-template/1 auth"
_WELCOME_LABEL = b"walredo-template/1 welcome"


# --------------------------------------------------------------------------------------------- messages

OptionValue = None | bool | int | float | str | bytes
Options = dict[str, OptionValue]  # spawn options, as validate_options() accepts them


@dataclass(frozen=True)
class Challenge:
    nonce: bytes
    version: int = PROTOCOL_VERSION


@dataclass(frozen=True)
class Auth:
    mac: bytes
    nonce: bytes


@dataclass(frozen=True)
class Welcome:
    mac: bytes
    pid: int


@dataclass(frozen=True)
class Spawn:
    request_id: int
    tenant: str
    # As decoded from the wire (any msgpack map): the template checks it with validate_options().
    options: dict[Any, Any]
    fd: int  # the child's end of the socketpair (owned by whoever holds this message)


@dataclass(frozen=True)
class Spawned:
    request_id: int
    pid: int
    pidfd: int  # owned by whoever holds this message


@dataclass(frozen=True)
class ErrorReply:
    """The ``error`` message: a typed refusal of one request, or the reason for a hang-up."""

    request_id: int | None
    code: str
    message: str = ""


#: The name :class:`ErrorReply` had before (the child protocol's ``Error`` is another message); kept for
#: the fuzzing targets that still spell it so.
Error = ErrorReply


@dataclass(frozen=True)
class Exited:
    pid: int
    status: int


@dataclass(frozen=True)
class Stderr:
    """One line a child wrote to its stderr (template → the parent that spawned it)."""

    pid: int
    tenant: str
    line: str


@dataclass(frozen=True)
class StatsRequest:
    request_id: int


@dataclass(frozen=True)
class StatsReply:
    request_id: int
    stats: dict[str, Any]  # any msgpack map (the template sends ints and bools)


@dataclass(frozen=True)
class BadRequest:
    """Event (not a wire message): a complete, well-framed request that is invalid. The connection stays
    usable; the template answers it with an ``error`` carrying ``code``. Any fds it carried are closed."""

    request_id: int | None
    code: str
    message: str


Message = Challenge | Auth | Welcome | Spawn | Spawned | ErrorReply | Exited | Stderr | StatsRequest | StatsReply


@dataclass(frozen=True)
class _Kind:
    """One row of the schema: a wire type and the message class it decodes to."""

    name: str  # the "t" field
    cls: type[Message]
    # wire field -> (attribute of cls, allowed types); in wire order (the encoder packs them in this order)
    fields: dict[str, tuple[str, tuple[type, ...]]]
    fd: str | None = None  # the attribute holding the one fd that rides on the frame, if any


_INT = (int,)
# The single table both encoder and decoder obey.
_KINDS = [
    _Kind("challenge", Challenge, {"v": ("version", _INT), "nonce": ("nonce", (bytes,))}),
    _Kind("auth", Auth, {"mac": ("mac", (bytes,)), "nonce": ("nonce", (bytes,))}),
    _Kind("welcome", Welcome, {"mac": ("mac", (bytes,)), "pid": ("pid", _INT)}),
    _Kind("spawn", Spawn, {"id": ("request_id", _INT), "tenant": ("tenant", (str,)),
                           "options": ("options", (dict,))}, fd="fd"),
    _Kind("spawned", Spawned, {"id": ("request_id", _INT), "pid": ("pid", _INT)}, fd="pidfd"),
    _Kind("error", ErrorReply, {"id": ("request_id", (int, type(None))), "code": ("code", (str,)),
                                "message": ("message", (str,))}),
    _Kind("exited", Exited, {"pid": ("pid", _INT), "status": ("status", _INT)}),
    _Kind("stderr", Stderr, {"pid": ("pid", _INT), "tenant": ("tenant", (str,)), "line": ("line", (str,))}),
    _Kind("stats", StatsRequest, {"id": ("request_id", _INT)}),
    _Kind("stats-reply", StatsReply, {"id": ("request_id", _INT), "stats": ("stats", (dict,))}),
]
_BY_NAME = {k.name: k for k in _KINDS}
_BY_CLASS = {k.cls: k for k in _KINDS}
# Every field of every message is on the wire (or is its fd): the table and the classes cannot drift apart.
assert all({f.name for f in fields(k.cls)} == {a for a, _ in k.fields.values()} | ({k.fd} if k.fd else set())
           for k in _KINDS)


def validate_tenant(tenant: object) -> str:
    """Return ``tenant`` if it is a valid tenant id; raise :class:`InvalidTenantId` otherwise."""
    if not isinstance(tenant, str) or TENANT_RE.fullmatch(tenant) is None:
        raise InvalidTenantId(f"invalid tenant id {tenant!r}: want 32 lowercase hex chars, optional -xxxx")
    return tenant


def validate_options(options: object) -> Options:
    """Return ``options`` if it is a map of at most 32 str keys to simple values; raise ``ValueError``
    (``TypeError`` for a non-dict) otherwise. Floats must be finite."""
    if not isinstance(options, dict):
        raise TypeError(f"options must be a dict, not {type(options).__name__}")
    if len(options) > MAX_OPTIONS:
        raise ValueError(f"at most {MAX_OPTIONS} options")
    for k, v in options.items():
        if not isinstance(k, str):
            raise ValueError(f"option key {k!r} is not a str")
        if v is not None and not isinstance(v, (bool, int, float, str, bytes)):
            raise ValueError(f"option {k!r} has unsupported type {type(v).__name__}")
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"option {k!r} is not finite")
        if isinstance(v, int) and not -(2**63) <= v < 2**64:
            raise ValueError(f"option {k!r} does not fit 64 bits")
    return options


def encode(msg: Message) -> tuple[bytes, list[int]]:
    """Return the frame for ``msg`` and the fds to attach to its first byte (in that order).

    Errors: ``TypeError`` for something that is not a wire message. Does not close or dup any fd.
    """
    kind = _BY_CLASS.get(type(msg))
    if kind is None:
        raise TypeError(f"not a control message: {msg!r}")
    body: dict[str, Any] = {"t": kind.name}
    for name, (attr, _types) in kind.fields.items():
        body[name] = getattr(msg, attr)
    return framing.pack(body), [] if kind.fd is None else [getattr(msg, kind.fd)]


def decode(body: bytes, fds: list[int]) -> Message:
    """Decode one frame body and its fds into a message; the message then owns the fds.

    Errors: :class:`ControlProtocolError` with code ``bad-request`` (not msgpack, unknown type, wrong fields or
    types), ``missing-fd`` or ``extra-fds``; ``request_id`` is set when it could be read. Every fd in
    ``fds`` is closed before the error propagates.
    """
    try:
        return _decode(body, fds)
    except ControlProtocolError:
        close_fds(fds)
        raise


def _decode(body: bytes, fds: list[int]) -> Message:
    try:
        obj = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as e:  # msgpack raises a zoo of types (ExtraData, FormatError, StackError, ValueError, ...)
        raise ControlProtocolError("bad-request", f"body is not msgpack: {e}") from None
    if not isinstance(obj, dict):
        raise ControlProtocolError("bad-request", "body is not a map")
    rid = obj.get("id")
    rid = rid if isinstance(rid, int) and not isinstance(rid, bool) else None
    name = obj.get("t")
    kind = _BY_NAME.get(name) if isinstance(name, str) else None
    if kind is None:
        raise ControlProtocolError("bad-request", f"unknown message type {name!r}", rid)
    if set(obj) != {"t", *kind.fields}:
        raise ControlProtocolError("bad-request", f"{name}: fields {sorted(map(str, obj))}", rid)
    args: dict[str, Any] = {}
    for field, (attr, types) in kind.fields.items():
        value = obj[field]
        if isinstance(value, bool) or not isinstance(value, types):
            raise ControlProtocolError("bad-request", f"{name}.{field} has type {type(value).__name__}", rid)
        args[attr] = value
    nfds = 0 if kind.fd is None else 1
    if len(fds) < nfds:
        raise ControlProtocolError("missing-fd", f"{name} needs {nfds} fd(s), got {len(fds)}", rid)
    if len(fds) > nfds:
        raise ControlProtocolError("extra-fds", f"{name} takes {nfds} fd(s), got {len(fds)}", rid)
    if kind.fd is not None:
        args[kind.fd] = fds[0]
    return kind.cls(**args)


# ---------------------------------------------------------------------------------------------- framing


@dataclass
class _FdBatch:
    start: int  # stream offset of the first byte of the chunk the fds came with
    end: int  # stream offset just past that chunk
    fds: list[int]


class FrameDecoder:
    """Split a byte stream (+ fd batches) into ``(body, fds)`` frames; see the module docstring for how fds
    are attributed. Holds fds until a frame claims them; :meth:`close` closes whatever it still holds."""

    # A legitimate peer has at most one frame in progress with fds; more pending batches are an attack.
    MAX_PENDING_BATCHES = 8

    def __init__(self, max_frame: int = MAX_FRAME):
        self._frames = framing.FrameReader(max_frame)
        self._batches: deque[_FdBatch] = deque()
        self.closed = False

    @property
    def max_frame(self) -> int:
        return self._frames.max_frame

    @max_frame.setter
    def max_frame(self, value: int) -> None:
        self._frames.max_frame = value

    @property
    def buffered(self) -> int:
        return self._frames.buffered

    def feed(self, data: bytes, fds: Sequence[int] = ()) -> None:
        """Add a received chunk and the fds that came with it; the decoder owns the fds from now on.

        Errors: :class:`ControlProtocolError` ``bad-fds`` if fds came without data or too many batches are
        pending (everything held is closed)."""
        fds = list(fds)
        if self.closed:
            close_fds(fds)
            raise ControlProtocolError("closed", "decoder is closed")
        if fds:
            if not data:
                close_fds(fds)
                self.close()
                raise ControlProtocolError("bad-fds", "fds without data")
            received = self._frames.received
            self._batches.append(_FdBatch(received, received + len(data), fds))
            if len(self._batches) > self.MAX_PENDING_BATCHES:
                self.close()
                raise ControlProtocolError("bad-fds", "too many fd batches pending")
        self._frames.feed(data)

    def next_frame(self) -> tuple[bytes, list[int]] | None:
        """Return the next complete ``(body, fds)`` (the caller owns the fds), or ``None`` if more data is
        needed.

        Errors: :class:`ControlProtocolError` ``frame-too-large`` or ``bad-fds`` (stray fds); fatal,
        everything held is closed."""
        if self.closed:
            return None
        frames = self._frames
        try:
            length = frames.next_length()
        except framing.FrameTooLarge as e:
            self.close()
            raise ControlProtocolError("frame-too-large", f"frame of {e.length} bytes (at most {e.bound})") from None
        if length is None:
            return None
        start = frames.consumed
        view = frames.take(length)
        if view is None:
            return None
        with view:
            body = bytes(view)
        end = frames.consumed
        owned: list[int] = []
        stray = False
        # Batches whose chunk ended inside this frame are now decidable (module docstring).
        while self._batches and self._batches[0].end <= end:
            batch = self._batches.popleft()
            if batch.start <= start:
                owned.extend(batch.fds)
            else:
                stray = True
                close_fds(batch.fds)
        if stray:
            close_fds(owned)
            self.close()
            raise ControlProtocolError("bad-fds", "fds not attached to the start of a frame")
        return body, owned

    def close(self) -> None:
        """Close every fd still held and refuse further input. Idempotent."""
        self.closed = True
        while self._batches:
            close_fds(self._batches.popleft().fds)
        self._frames.clear()


# ------------------------------------------------------------------------------------------- connection


class Role(enum.Enum):
    TEMPLATE = "template"
    PARENT = "parent"


class State(enum.Enum):
    AWAIT_AUTH = "await-auth"  # template: challenge sent
    AWAIT_CHALLENGE = "await-challenge"  # parent: nothing received yet
    AWAIT_WELCOME = "await-welcome"  # parent: auth sent
    READY = "ready"
    CLOSED = "closed"


_SENDS = {
    Role.TEMPLATE: (Spawned, ErrorReply, Exited, Stderr, StatsReply),
    Role.PARENT: (Spawn, StatsRequest),
}
_RECEIVES = {
    Role.TEMPLATE: (Spawn, StatsRequest),
    Role.PARENT: (Spawned, ErrorReply, Exited, Stderr, StatsReply),
}


def _mac(key: bytes | Key, label: bytes, a: bytes, b: bytes) -> bytes:
    if isinstance(key, Key):
        return key.mac(label + a + b)
    return hmac.digest(key, label + a + b, "sha256")


class ControlConnection:
    """One end of a control connection, as a state machine (no I/O).

    Usage: the template calls :meth:`start` to get the challenge; both sides feed :meth:`receive_data`, pull
    :meth:`next_event` until it returns ``None``, and send what :meth:`data_to_send` returns (each item is
    ``(frame, fds)``; the fds go with the frame's first byte). Handshake messages are handled inside; the
    only events returned are requests/replies (and :class:`BadRequest` on the template side).

    Fatal problems raise :class:`ControlProtocolError` from :meth:`next_event` / :meth:`receive_data`; the
    connection is then ``CLOSED`` and every fd it held is closed. For the template, :meth:`data_to_send`
    may still hold an ``error`` frame worth a best-effort send before closing the socket.
    """

    def __init__(self, role: Role, key: bytes | Key, *, nonce: bytes | None = None, pid: int | None = None):
        if len(key) != KEY_SIZE:
            raise ValueError(f"key must be {KEY_SIZE} bytes")
        self.role = role
        # Looked up once: indexing the tables by the enum on every message runs Enum.__hash__ (Python code).
        self._sends = _SENDS[role]
        self._receives = _RECEIVES[role]
        # A Key is shared, never copied: the template's stays in memory its children do not inherit
        # (forkserver.secret); a bytes key (the parent's side, tests) is copied.
        self._key = key if isinstance(key, Key) else bytes(key)
        self._nonce = nonce if nonce is not None else os.urandom(NONCE_SIZE)
        self._peer_nonce = b""
        self._pid = pid if pid is not None else os.getpid()
        self.peer_pid: int | None = None  # the template's pid, learnt from welcome (parent side)
        self.state = State.AWAIT_AUTH if role is Role.TEMPLATE else State.AWAIT_CHALLENGE
        self._decoder = FrameDecoder(MAX_FRAME_UNAUTHENTICATED)
        self._out: deque[tuple[bytes, list[int]]] = deque()
        self._started = role is Role.PARENT

    @property
    def authenticated(self) -> bool:
        return self.state is State.READY

    def start(self) -> None:
        """Template side: queue the challenge (call once, right after the peer-credential check)."""
        if self.role is not Role.TEMPLATE or self._started:
            raise RuntimeError("start() is for a fresh template-side connection")
        self._started = True
        self._out.append(encode(Challenge(self._nonce)))

    def data_to_send(self) -> list[tuple[bytes, list[int]]]:
        """Return and forget the queued ``(frame, fds)`` items, in order."""
        out = list(self._out)
        self._out.clear()
        return out

    def send(self, msg: Message) -> None:
        """Queue a request (parent) or reply (template). The fds inside ``msg`` are NOT closed or dup'ed:
        the caller keeps them open until the frame was sent, then closes its copies.

        Errors: ``RuntimeError`` when not authenticated / closed or the message is not ours to send."""
        if self.state is not State.READY:
            raise RuntimeError(f"cannot send in state {self.state.value}")
        if not isinstance(msg, self._sends):
            raise RuntimeError(f"{self.role.value} does not send {type(msg).__name__}")
        self._out.append(encode(msg))

    def receive_data(self, data: bytes, fds: Sequence[int] = ()) -> None:
        """Feed received bytes and the fds that came with them; the connection owns the fds from now on.
        (At EOF the caller just calls :meth:`close`: a partial frame is dropped with its fds.)"""
        if self.state is State.CLOSED:
            close_fds(fds)
            return
        try:
            self._decoder.feed(data, fds)
        except ControlProtocolError:
            self._fail()
            raise

    def next_event(self) -> Message | BadRequest | None:
        """Return the next event, or ``None`` when more data is needed. The caller owns the fds of the
        returned message. Errors: :class:`ControlProtocolError` (fatal, connection closed)."""
        while self.state is not State.CLOSED:
            try:
                frame = self._decoder.next_frame()
            except ControlProtocolError as e:
                self._fail(e)
                raise
            if frame is None:
                return None
            body, fds = frame
            try:
                msg = decode(body, fds)
            except ControlProtocolError as e:
                if self.state is State.READY and self.role is Role.TEMPLATE:
                    return BadRequest(e.request_id, e.code, e.message)
                self._fail(e if self.role is Role.TEMPLATE else None)
                raise
            event = self._handle(msg)
            if event is not None:
                return event
        return None

    def receive_events(self, data: bytes, fds: Sequence[int] = ()) -> Iterator[Message | BadRequest]:
        """:meth:`receive_data`, then yield every :meth:`next_event` until more data is needed or the
        connection is closed (also by the caller while handling an event). Errors as those two."""
        self.receive_data(data, fds)
        while (event := self.next_event()) is not None:
            yield event

    def close(self) -> None:
        """Close every fd still held; further input is dropped. Idempotent."""
        self.state = State.CLOSED
        self._decoder.close()

    # -- internals

    def _fail(self, err: ControlProtocolError | None = None) -> None:
        self.close()
        if err is not None and self.role is Role.TEMPLATE:
            # Best effort: tell the peer why we are hanging up (the caller may or may not send it).
            self._out.append(encode(ErrorReply(err.request_id, err.code, err.message)))

    def _handle(self, msg: Message) -> Message | BadRequest | None:
        if self.state is State.READY:
            if isinstance(msg, self._receives):
                return msg
            if self.role is Role.TEMPLATE:
                _close_msg_fds(msg)
                return BadRequest(getattr(msg, "request_id", None), "bad-request",
                                  f"unexpected {type(msg).__name__}")
            _close_msg_fds(msg)
            err = ControlProtocolError("bad-request", f"unexpected {type(msg).__name__} from the template")
            self._fail()
            raise err
        if self.state is State.AWAIT_AUTH:
            if isinstance(msg, Auth) and len(msg.nonce) == NONCE_SIZE and hmac.compare_digest(
                msg.mac, _mac(self._key, _AUTH_LABEL, self._nonce, msg.nonce)
            ):
                self._out.append(encode(Welcome(_mac(self._key, _WELCOME_LABEL, msg.nonce, self._nonce),
                                                self._pid)))
                self._ready()
                return None
            _close_msg_fds(msg)
            err = ControlProtocolError("auth-failed", "authentication failed")
            self._fail(err)
            raise err
        if self.state is State.AWAIT_CHALLENGE:
            if isinstance(msg, Challenge) and msg.version == PROTOCOL_VERSION and len(msg.nonce) == NONCE_SIZE:
                self._peer_nonce = msg.nonce
                self._out.append(encode(Auth(_mac(self._key, _AUTH_LABEL, msg.nonce, self._nonce),
                                             self._nonce)))
                self.state = State.AWAIT_WELCOME
                return None
            _close_msg_fds(msg)
            if isinstance(msg, ErrorReply):
                err = ControlProtocolError(msg.code, f"template refused us: {msg.message}")
            else:
                err = ControlProtocolError("auth-failed", f"expected a v{PROTOCOL_VERSION} challenge")
            self._fail()
            raise err
        if self.state is State.AWAIT_WELCOME:
            if isinstance(msg, Welcome) and hmac.compare_digest(
                msg.mac, _mac(self._key, _WELCOME_LABEL, self._nonce, self._peer_nonce)
            ):
                self.peer_pid = msg.pid
                self._ready()
                return None
            _close_msg_fds(msg)
            if isinstance(msg, ErrorReply):
                err = ControlProtocolError(msg.code, f"template refused us: {msg.message}")
            else:
                err = ControlProtocolError("auth-failed", "the template did not prove it holds the key")
            self._fail()
            raise err
        raise AssertionError(self.state)

    def _ready(self) -> None:
        self.state = State.READY
        # The template's replies may be larger than any request (a stats reply lists the children); what
        # the template accepts stays small.
        self._decoder.max_frame = MAX_FRAME if self.role is Role.TEMPLATE else MAX_REPLY_FRAME


def _close_msg_fds(msg: Message) -> None:
    if isinstance(msg, Spawn):
        close_fds([msg.fd])
    elif isinstance(msg, Spawned):
        close_fds([msg.pidfd])
