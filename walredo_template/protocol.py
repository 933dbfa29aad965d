"""The child protocol: what the parent and one walredo child say over the child socket.

Sans-IO: this module turns messages into bytes and bytes into messages. It never touches a socket, so the
child (:mod:`walredo_template.worker`, blocking), the parent (:mod:`forkserver.process`, asyncio) and the
tests share it.

Wire format
===========

The child socket is an ``AF_UNIX`` ``SOCK_STREAM`` socketpair; no file descriptors travel on it. Each
direction is a sequence of frames::

    0                   1                   2                   3
    0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
   +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
   |              length N (u32, big-endian, 1 ≤ N ≤ max)          |
   +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
   |          payload: N bytes, exactly one msgpack map            |
   :                                                               :
   +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

The frame is the one every fork-server protocol uses (:mod:`walredo_template.framing`). ``max`` is
:data:`MAX_FRAME_SIZE` (64 MiB) unless a decoder is built with another bound. A length above it is a
protocol error as soon as the 4 length bytes have arrived (the payload is never buffered).

Each payload is a msgpack map with str keys. ``type`` (str) names the message; ``id`` is optional
(absent or nil, or an int in [0, 2**64)) and a response echoes its request's ``id``. Strings are msgpack
str (UTF-8), byte strings are msgpack bin, integers are msgpack int (never bool; the one flag,
``wal_log_hints``, is msgpack bool). Keys not listed below
are a protocol error: both ends ship in one package, so an unknown key is a bug, not a newer peer.

Requests (parent → child)::

    {"type": "ping", "id"?: int}
    {"type": "redo", "id"?: int,
     "tag": [spcnode, dbnode, relnode, forknum, blknum],     # 5 ints, u32 each
     "lsn": int,                                             # u64: the LSN the page is wanted at
     "base_image": bin | nil,                                # the page before the records, or nil
     "records": [[end_lsn: int, record: bin], ...],          # raw XLogRecords, oldest first
     "pg_version": int,                                      # 15 is the only one served
     "wal_log_hints"?: bool}                                 # default false: the cluster had neither
                                                             # data checksums nor wal_log_hints on

Responses (child → parent), exactly one per request, **in request order** (so pipelining is in-order and
the ``id`` is only a cross-check)::

    {"type": "pong", "id"?: int}
    {"type": "page", "id"?: int, "page": bin}                # exactly 8192 bytes
    {"type": "error", "id"?: int, "code": str, "message": str}

Error codes (:data:`ERROR_CODES`): ``unsupported-record``, ``invalid-record``, ``block-not-referenced``,
``invalid-page``, ``missing-compression-library`` (the redo engine refused its input: deterministic),
``bad-request`` (the redo request is well-formed but its values are not valid, e.g. a base image that
is not 8192 bytes), ``unsupported-pg-version``, ``internal`` (the engine failed unexpectedly; no page is
returned for that request and the child keeps serving), ``too-large`` (the frame announced more bytes than
the child's memory limit lets it decode and redo, see below), and ``protocol``: the child could not decode
a frame; it sends this error (``id`` nil) after the responses to every earlier request, then closes the
socket. Nothing follows a ``protocol`` error.

A decoder built with ``refuse_above=n`` (the walredo child: what its memory limit allows, see
:func:`forkserver.sandbox.request_budget`) treats a frame whose length is above ``n`` but within ``max``
as a request it refuses without reading: it yields :class:`Oversized` as soon as the 4 length bytes have
arrived and discards the payload as it arrives, never buffering it. The child answers it with a
``too-large`` error **without an id** (it never saw the payload that holds it): responses are in request
order, so the parent attributes it to the request in that position. The stream continues.

A redo request whose frame is well-formed but whose values are out of range (negative LSN, tag member
above u32, base image not 8192 bytes, no base image and no records) gets ``bad-request`` and the stream
continues; only an undecodable frame ends it.

Size: ~570 lines, ~80 of them this specification; the rest is one codec per direction (encoders,
validation, parsers, the two decoders), which share the checks that keep both ends to the same wire. The
frame itself lives in :mod:`walredo_template.framing`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgpack

from walredo_template import BufferTag, framing

PAGE_SIZE = 8192
#: Largest payload either side accepts. A redo request carries at most a page and its WAL records;
#: 64 MiB is far above any real one and low enough that a corrupt length cannot make us buffer gigabytes.
MAX_FRAME_SIZE = 64 * 1024 * 1024
SUPPORTED_PG_VERSION = 15

_U32_MAX = 2**32 - 1
_U64_MAX = 2**64 - 1

ERROR_CODES = frozenset(
    {
        "unsupported-record",
        "invalid-record",
        "block-not-referenced",
        "invalid-page",
        "missing-compression-library",
        "bad-request",
        "unsupported-pg-version",
        "internal",
        "too-large",
        "protocol",
    }
)


# --------------------------------------------------------------------------------------------- errors


class ProtocolError(ValueError):
    """A frame could not be decoded into a message. The stream is unusable afterwards."""

    code = "protocol"


class FrameTooLarge(ProtocolError):
    """A frame's length prefix exceeds the bound (or, when encoding, the message would)."""


class MalformedFrame(ProtocolError):
    """A frame's payload is not a single msgpack value (or is empty)."""


class InvalidMessage(ProtocolError):
    """A frame's payload is msgpack but not a message of this protocol (wrong type, key or value type)."""


class BadRedoRequest(ValueError):
    """A redo request is well-formed but its values are invalid (answered as ``bad-request``)."""

    code = "bad-request"


# ------------------------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class Ping:
    id: int | None = None


@dataclass(frozen=True, slots=True)
class Redo:
    tag: BufferTag
    lsn: int
    base_image: bytes | None
    records: Sequence[tuple[int, bytes]]
    pg_version: int = SUPPORTED_PG_VERSION
    id: int | None = None
    # Whether the cluster had data checksums or wal_log_hints on: decides whether Heap2 VISIBLE stamps the
    # heap page's LSN, so the engine needs it to reproduce PostgreSQL's page exactly.
    wal_log_hints: bool = False


@dataclass(frozen=True, slots=True)
class Pong:
    id: int | None = None


@dataclass(frozen=True, slots=True)
class Page:
    page: bytes
    id: int | None = None


@dataclass(frozen=True, slots=True)
class Error:
    code: str
    message: str
    id: int | None = None


@dataclass(frozen=True, slots=True)
class Oversized:
    """Decoder event (not a wire message): a request frame of ``size`` bytes above the decoder's
    ``refuse_above`` bound, refused unread (its payload is discarded); answered with ``too-large``."""

    size: int
    bound: int


Request = Ping | Redo
Response = Pong | Page | Error


# ------------------------------------------------------------------------------------------- encoding


def _frame(payload: dict[str, Any], max_frame_size: int) -> bytes:
    try:
        return framing.pack(payload, max_frame_size)
    except framing.FrameTooLarge as e:
        raise FrameTooLarge(f"message of {e.length} bytes exceeds the frame bound of {e.bound}") from None


def _with_id(payload: dict[str, Any], id: int | None) -> dict[str, Any]:
    if id is not None:
        _check_id(id)
        payload["id"] = id
    return payload


def encode_ping(id: int | None = None) -> bytes:
    """Frame a ``ping`` request. Raises ``InvalidMessage`` for an id that is not a u64."""
    return _frame(_with_id({"type": "ping"}, id), MAX_FRAME_SIZE)


def encode_redo(
    tag: Sequence[int],
    lsn: int,
    base_image: bytes | None,
    records: Sequence[tuple[int, bytes]],
    pg_version: int = SUPPORTED_PG_VERSION,
    id: int | None = None,
    *,
    wal_log_hints: bool = False,
    max_frame_size: int = MAX_FRAME_SIZE,
) -> bytes:
    """Frame a ``redo`` request after :func:`validate_redo` (``RedoRequest(...).frame(id)``).

    Raises ``BadRedoRequest`` (a ``ValueError``) or ``TypeError`` for invalid arguments, ``InvalidMessage``
    for a bad id and ``FrameTooLarge`` if the encoded request exceeds ``max_frame_size``.
    """
    request = RedoRequest(
        tag, lsn, base_image, records, pg_version, wal_log_hints=wal_log_hints, max_frame_size=max_frame_size
    )
    return request.frame(id)


class RedoRequest:
    """A ``redo`` request whose arguments were checked once, at construction (:func:`validate_redo`).

    :meth:`frame` encodes it for a given id. The parent checks a request before it spawns anything and
    frames it only when it is queued on a process (the id is assigned then): one check, not one per step.
    Raises as :func:`encode_redo` (``TypeError``/``BadRedoRequest`` here, ``InvalidMessage`` and
    ``FrameTooLarge`` from :meth:`frame`).
    """

    __slots__ = ("_payload", "_max_frame_size")

    def __init__(
        self,
        tag: Sequence[int],
        lsn: int,
        base_image: bytes | None,
        records: Sequence[tuple[int, bytes]],
        pg_version: int = SUPPORTED_PG_VERSION,
        *,
        wal_log_hints: bool = False,
        max_frame_size: int = MAX_FRAME_SIZE,
    ) -> None:
        validate_redo(tag, lsn, base_image, records, pg_version)
        if type(wal_log_hints) is not bool:
            raise TypeError(f"wal_log_hints must be bool, got {type(wal_log_hints).__name__}")
        payload: dict[str, Any] = {
            "type": "redo",
            "tag": list(tag),
            "lsn": lsn,
            "base_image": None if base_image is None else bytes(base_image),
            "records": [[end_lsn, bytes(rec)] for end_lsn, rec in records],
            "pg_version": pg_version,
        }
        if wal_log_hints:  # omitted when false: the common case stays one key shorter
            payload["wal_log_hints"] = True
        self._payload = payload
        self._max_frame_size = max_frame_size

    def frame(self, id: int | None = None) -> bytes:
        """The request as one frame, carrying ``id``; may be called again (the request is not changed)."""
        payload = self._payload if id is None else _with_id(dict(self._payload), id)
        return _frame(payload, self._max_frame_size)


def encode_pong(id: int | None = None) -> bytes:
    """Frame a ``pong`` response."""
    return _frame(_with_id({"type": "pong"}, id), MAX_FRAME_SIZE)


def encode_page(page: bytes, id: int | None = None) -> bytes:
    """Frame a ``page`` response. Raises ``ValueError`` unless ``page`` is exactly 8192 bytes."""
    if not isinstance(page, (bytes, bytearray, memoryview)) or len(page) != PAGE_SIZE:
        raise ValueError(f"a page is {PAGE_SIZE} bytes")
    return _frame(_with_id({"type": "page", "page": bytes(page)}, id), MAX_FRAME_SIZE)


def encode_error(code: str, message: str, id: int | None = None) -> bytes:
    """Frame an ``error`` response. Raises ``ValueError`` for a code not in :data:`ERROR_CODES`."""
    if code not in ERROR_CODES:
        raise ValueError(f"unknown error code {code!r}")
    # An exception's text may hold lone surrogates (surrogateescape'd bytes), which UTF-8 cannot encode.
    text = str(message).encode("utf-8", "replace").decode("utf-8")
    return _frame(_with_id({"type": "error", "code": code, "message": text}, id), MAX_FRAME_SIZE)


# ------------------------------------------------------------------------------------------ validation


def _is_int(v: object) -> bool:
    # bool is an int subclass; on this wire it is a type error, not 0/1.
    return type(v) is int


def _check_id(id: object) -> None:
    if not _is_int(id) or not 0 <= id <= _U64_MAX:  # type: ignore[operator]
        raise InvalidMessage(f"id must be an int in [0, 2**64), got {id!r}")


def validate_redo(
    tag: Sequence[int],
    lsn: int,
    base_image: bytes | None,
    records: Sequence[tuple[int, bytes]],
    pg_version: int,
) -> None:
    """Check a redo request's values; both ends call it (the parent before any I/O).

    Raises ``TypeError`` for a wrong Python type and ``BadRedoRequest`` (a ``ValueError``) for a value out
    of range: a tag that is not 5 u32s, an LSN or end LSN outside u64, a base image that is not 8192 bytes,
    an empty record list with no base image, records out of LSN order or ending after ``lsn``
    (:func:`check_record_lsns`). ``pg_version`` is only type-checked: which versions are served
    is the child's decision (``unsupported-pg-version``).
    """
    if not isinstance(tag, (tuple, list)) or len(tag) != 5:
        raise BadRedoRequest(f"tag must be 5 ints (spcnode, dbnode, relnode, forknum, blknum), got {tag!r}")
    for v in tag:
        if not _is_int(v):
            raise TypeError(f"tag members must be int, got {type(v).__name__}")
        if not 0 <= v <= _U32_MAX:
            raise BadRedoRequest(f"tag member {v} is outside u32")
    if not _is_int(lsn):
        raise TypeError(f"lsn must be int, got {type(lsn).__name__}")
    if not 0 <= lsn <= _U64_MAX:
        raise BadRedoRequest(f"lsn {lsn} is outside u64")
    if base_image is not None:
        if not isinstance(base_image, (bytes, bytearray, memoryview)):
            raise TypeError(f"base_image must be bytes or None, got {type(base_image).__name__}")
        if len(base_image) != PAGE_SIZE:
            raise BadRedoRequest(f"base_image is {len(base_image)} bytes, not {PAGE_SIZE}")
    if isinstance(records, (str, bytes, bytearray, memoryview)) or not isinstance(records, Sequence):
        raise TypeError(f"records must be a sequence of (end_lsn, bytes), got {type(records).__name__}")
    # Fast check of the common case (what RequestDecoder produces) in one comprehension; anything it does
    # not accept goes through the loop below, which names the problem.
    good = [
        1 for item in records
        if type(item) is tuple and len(item) == 2 and type(item[0]) is int and 0 <= item[0] <= _U64_MAX
        and type(item[1]) is bytes
    ]
    for item in records if len(good) != len(records) else ():
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise TypeError(f"each record must be an (end_lsn, bytes) pair, got {item!r:.80}")
        end_lsn, rec = item
        if not _is_int(end_lsn):
            raise TypeError(f"record end_lsn must be int, got {type(end_lsn).__name__}")
        if not 0 <= end_lsn <= _U64_MAX:
            raise BadRedoRequest(f"record end_lsn {end_lsn} is outside u64")
        if not isinstance(rec, (bytes, bytearray, memoryview)):
            raise TypeError(f"record must be bytes, got {type(rec).__name__}")
    if not records and base_image is None:
        raise BadRedoRequest("a redo request needs a base image or at least one record")
    if not _is_int(pg_version):
        raise TypeError(f"pg_version must be int, got {type(pg_version).__name__}")
    check_record_lsns(lsn, records)


def check_record_lsns(lsn: int, records: Sequence[tuple[int, bytes]]) -> None:
    """Refuse records out of LSN order, or ending after the LSN the page is asked at.

    ``records`` are type-checked ``(end_lsn, record)`` pairs: their end LSNs must be strictly ascending (WAL
    order; two records never end at the same LSN) and the last must be at or before ``lsn``. Raises
    ``BadRedoRequest``. Part of :func:`validate_redo`, so the child refuses such a request too
    (``bad-request``), whoever framed it.
    """
    prev = -1
    for end_lsn, _rec in records:
        if end_lsn <= prev:
            raise BadRedoRequest(f"records are not in ascending LSN order: end LSN {end_lsn:X} follows {prev:X}")
        prev = end_lsn
    if prev > lsn:
        raise BadRedoRequest(f"the last record ends at LSN {prev:X}, after the request's LSN {lsn:X}")


# ------------------------------------------------------------------------------------------- decoding


def _get_id(m: dict[str, Any]) -> int | None:
    id = m.get("id")
    if id is not None:
        _check_id(id)
    return id


def _expect_keys(m: dict[str, Any], required: frozenset[str], optional: frozenset[str] = frozenset()) -> None:
    keys = m.keys()
    missing = required - keys
    if missing:
        raise InvalidMessage(f"{m['type']} message lacks {sorted(missing)}")
    extra = keys - required - optional - {"type", "id"}
    if extra:
        raise InvalidMessage(f"{m['type']} message has unknown keys {sorted(extra)}")


def _parse_ping(m: dict[str, Any]) -> Ping:
    _expect_keys(m, frozenset())
    return Ping(_get_id(m))


_REDO_KEYS = frozenset({"tag", "lsn", "base_image", "records", "pg_version"})


def _parse_redo(m: dict[str, Any]) -> Redo:
    _expect_keys(m, _REDO_KEYS, frozenset({"wal_log_hints"}))
    id = _get_id(m)
    wal_log_hints = m.get("wal_log_hints", False)
    if type(wal_log_hints) is not bool:
        raise InvalidMessage("redo wal_log_hints must be a bool")
    tag, lsn, base_image, records, pg_version = (
        m["tag"], m["lsn"], m["base_image"], m["records"], m["pg_version"],
    )
    # Shape and types only: a value out of range is the receiver's `bad-request`, not a broken stream.
    if type(tag) is not list or len(tag) != 5 or not all(_is_int(v) for v in tag):
        raise InvalidMessage("redo tag must be a list of 5 ints")
    if not _is_int(lsn):
        raise InvalidMessage("redo lsn must be an int")
    if base_image is not None and type(base_image) is not bytes:
        raise InvalidMessage("redo base_image must be bin or nil")
    if type(records) is not list:
        raise InvalidMessage("redo records must be a list")
    # One comprehension rather than a loop with a call per record: this runs for every record of every
    # request. Whatever is not an [int, bin] pair is filtered out, and then the lengths differ.
    out = [
        (item[0], item[1]) for item in records
        if type(item) is list and len(item) == 2 and type(item[0]) is int and type(item[1]) is bytes
    ]
    if len(out) != len(records):
        raise InvalidMessage("each redo record must be [int, bin]")
    if not _is_int(pg_version):
        raise InvalidMessage("redo pg_version must be an int")
    return Redo(BufferTag(*tag), lsn, base_image, out, pg_version, id, wal_log_hints)


def _parse_pong(m: dict[str, Any]) -> Pong:
    _expect_keys(m, frozenset())
    return Pong(_get_id(m))


def _parse_page(m: dict[str, Any]) -> Page:
    _expect_keys(m, frozenset({"page"}))
    page = m["page"]
    if type(page) is not bytes or len(page) != PAGE_SIZE:
        raise InvalidMessage(f"page must be bin of {PAGE_SIZE} bytes")
    return Page(page, _get_id(m))


def _parse_error(m: dict[str, Any]) -> Error:
    _expect_keys(m, frozenset({"code", "message"}))
    code, message = m["code"], m["message"]
    if type(code) is not str or type(message) is not str:
        raise InvalidMessage("error code and message must be str")
    if code not in ERROR_CODES:
        raise InvalidMessage(f"unknown error code {code!r}")
    return Error(code, message, _get_id(m))


# A parser takes msgpack's decoded map (hence Any) and returns the message or raises InvalidMessage.
_REQUEST_PARSERS: dict[str, Callable[[dict[str, Any]], Request]] = {"ping": _parse_ping, "redo": _parse_redo}
_RESPONSE_PARSERS: dict[str, Callable[[dict[str, Any]], Response]] = {
    "pong": _parse_pong, "page": _parse_page, "error": _parse_error,
}

_M = TypeVar("_M", Request, Response)  # the direction a decoder reads


class _State(enum.Enum):
    OK = "ok"
    BROKEN = "broken"  # an earlier frame failed: every later call raises the same error


class _Decoder(Generic[_M]):
    """Frame splitter + message parser. Feed bytes with :meth:`receive_data`, take messages out with
    :meth:`next_event` (``None`` = need more data) or by iterating.

    After a :class:`ProtocolError` the decoder is broken: every later :meth:`next_event` raises the same
    error, because a byte stream cannot be resynchronised after a bad frame.
    """

    _parsers: dict[str, Callable[[dict[str, Any]], _M]]

    def __init__(self, max_frame_size: int = MAX_FRAME_SIZE, *, refuse_above: int | None = None) -> None:
        if max_frame_size < 1:
            raise ValueError("max_frame_size must be positive")
        self.max_frame_size = max_frame_size
        # Frames longer than this (but within max_frame_size) are refused unread (Oversized): the stream
        # survives, the payload is never buffered. None: every frame within max_frame_size is decoded.
        self.refuse_above = refuse_above
        self._frames = framing.FrameReader(max_frame_size)
        self._state = _State.OK
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a message (non-zero at EOF = a truncated frame)."""
        return self._frames.buffered

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes read from the stream (copied: the caller may reuse its buffer). Never raises for
        bad data (:meth:`next_event` does)."""
        self._frames.feed(data)

    def next_event(self) -> _M | Oversized | None:
        """Return the next complete message (or :class:`Oversized` for a refused frame, only with
        ``refuse_above``), or ``None`` if more bytes are needed.

        Raises ``FrameTooLarge``, ``MalformedFrame`` or ``InvalidMessage`` (all ``ProtocolError``).
        """
        if self._state is _State.BROKEN:
            assert self._error is not None
            raise self._error
        frames = self._frames
        try:
            n = frames.next_length()
        except framing.FrameTooLarge as e:
            raise self._broken(FrameTooLarge(str(e))) from None
        if n is None:
            return None
        if self.refuse_above is not None and n > self.refuse_above:
            # Refused before its payload is buffered: what is here is dropped, the rest as it arrives.
            frames.discard(n)
            return Oversized(n, self.refuse_above)
        payload = frames.take(n)
        if payload is None:
            return None
        # Parse straight out of the buffer: msgpack copies what it keeps (the records). The view is
        # released before returning, so the buffer can be resized by the next receive_data.
        with payload:
            return self._parse(payload)

    def __iter__(self) -> Iterator[_M | Oversized]:
        """Yield every complete buffered message; raises like :meth:`next_event`."""
        while (event := self.next_event()) is not None:
            yield event

    def _broken(self, error: ProtocolError) -> ProtocolError:
        self._state = _State.BROKEN
        self._error = error
        return error

    def _parse(self, payload: bytes | memoryview) -> _M:
        if not payload:
            raise self._broken(MalformedFrame("empty frame"))
        try:
            m = msgpack.unpackb(payload, raw=False, strict_map_key=True, use_list=True)
        except Exception as e:  # msgpack raises several unrelated types (ExtraData, FormatError, ...)
            raise self._broken(MalformedFrame(f"frame is not one msgpack value: {type(e).__name__}: {e}")) from e
        try:
            if type(m) is not dict:
                raise InvalidMessage(f"frame is msgpack {type(m).__name__}, not a map")
            kind = m.get("type")
            parser = self._parsers.get(kind) if type(kind) is str else None
            if parser is None:
                raise InvalidMessage(f"unknown message type {kind!r:.40}")
            return parser(m)
        except InvalidMessage as e:
            raise self._broken(e) from None


class RequestDecoder(_Decoder[Request]):
    """Decodes the parent → child direction: yields :class:`Ping` and :class:`Redo`."""

    _parsers = _REQUEST_PARSERS


class ResponseDecoder(_Decoder[Response]):
    """Decodes the child → parent direction: yields :class:`Pong`, :class:`Page` and :class:`Error`."""

    _parsers = _RESPONSE_PARSERS


__all__ = [
    "ERROR_CODES", "MAX_FRAME_SIZE", "PAGE_SIZE", "SUPPORTED_PG_VERSION", "BadRedoRequest", "Error", "FrameTooLarge",
    "InvalidMessage", "MalformedFrame", "Oversized", "Page", "Ping", "Pong", "ProtocolError", "Redo", "RedoRequest",
    "Request", "RequestDecoder", "Response", "ResponseDecoder", "encode_error", "encode_page", "encode_ping",
    "encode_pong", "encode_redo", "validate_redo", "check_record_lsns",
]
