"""The fuzz targets. Each turns one input (bytes) into a call of the code under test and checks that the
only outcomes are a typed error or a valid result; anything else raises :class:`Violation`.

========================  ==========================================  ============================================
target                    calls                                       allowed errors / checked results
========================  ==========================================  ============================================
``control``               ``forkserver.control.ControlConnection``    ``forkserver.errors.ProtocolError`` (then
                          (template or parent side, fresh or          the connection is CLOSED); events are the
                          authenticated): ``receive_data`` with real  role's messages or ``BadRequest``; each
                          fds, ``next_event`` until ``None``          message re-encodes to itself; every fd is
                                                                      closed by the decoder or owned by an event
``child``                 ``walredo_template.protocol``               ``protocol.ProtocolError``, raised again on
                          ``RequestDecoder`` / ``ResponseDecoder``    every later call; events re-encode to
                          (``refuse_above`` and small bounds too),    themselves (a redo request: after
                          fed in chunks                               ``validate_redo``, whose ``TypeError`` /
                                                                      ``BadRedoRequest`` are allowed)
``record``                ``pg.xlogrecord.decode_record`` (CRC        ``RedoError``; the fast paths agree with the
                          fixed or not, checked or not), then every   general decoder; blocks sane; images are
                          block's ``image()``                         8192 bytes; the record re-encodes to itself
``apply``                 ``walredo_template.redo.apply_records``     ``RedoError``; the page is 8192 bytes and
                          on mutated records and base pages           structurally valid (pg/pagecheck.py)
``apply-valid``           ``apply``, on requests whose base page      as ``apply``: a violation here is a redo
                          and full-page images are valid              routine's own (it survives input checks)
========================  ==========================================  ============================================

Input layouts: ``control``: mode byte (bits 0-1: template ready, parent ready, template before auth,
parent before the challenge), fd byte (2 bits per chunk: how many fds ride on chunks 1-4), chunk size
byte, stream. ``child``: mode byte (bit 0 responses, bit 1 ``refuse_above=4096``, bit 2 a 64 KiB frame
bound), chunk size byte, stream. ``record``: mode byte (bit 0 fix the CRC, bit 1 skip the CRC check),
record. ``apply``: :mod:`fuzzing.inputs`.
"""

from __future__ import annotations

import errno
import os
import random
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from forkserver import control
from forkserver.errors import ProtocolError as ControlProtocolError
from walredo_template import protocol
from walredo_template.pg import xlogrecord
from walredo_template.pg.errors import RedoError
from walredo_template.pg.pagecheck import bad_line_pointer, page_kind, page_problem
from walredo_template.redo import apply_records, record_name

from . import inputs
from .mutate import ByteMutate, mutate_apply, mutate_record_fields
from .records import encode_record, finish_record, strip_check_images

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Violation(Exception):
    """The invariant broke. ``signature`` groups violations with one cause (exception type and the
    innermost project frame, or the page fault class); ``detail`` is the traceback or the fault."""

    def __init__(self, signature: str, detail: str) -> None:
        super().__init__(f"{signature}: {detail}")
        self.signature = signature
        self.detail = detail


def unexpected(e: BaseException) -> Violation:
    """A Violation for an exception outside the allowed set, signed by where it was raised."""
    frames = traceback.extract_tb(e.__traceback__)
    ours = [f for f in frames if "/walredo_template/" in f.filename or "/forkserver/" in f.filename]
    where = (ours or frames)[-1] if frames else None
    loc = "?" if where is None else f"{os.path.relpath(where.filename, REPO)}:{where.lineno}"
    return Violation(f"{type(e).__name__}@{loc}", "".join(traceback.format_exception(e)))


def _chunks(stream: bytes, size_byte: int) -> Iterator[bytes]:
    size = (size_byte % 97) + 1 if size_byte else max(1, len(stream))
    for i in range(0, len(stream), size):
        yield stream[i:i + size]


# --------------------------------------------------------------------------------------- control


_KEY = bytes(range(32))
_T_NONCE = b"T" * 32
_P_NONCE = b"P" * 32


def _control_pair() -> tuple[control.ControlConnection, control.ControlConnection]:
    """A template-side and a parent-side connection, each fresh (the template's challenge queued)."""
    t = control.ControlConnection(control.Role.TEMPLATE, _KEY, nonce=_T_NONCE, pid=1)
    t.start()
    p = control.ControlConnection(control.Role.PARENT, _KEY, nonce=_P_NONCE, pid=2)
    return t, p


def _handshake(t: control.ControlConnection, p: control.ControlConnection) -> None:
    for frame, fds in t.data_to_send():
        p.receive_data(frame, fds)
    p.next_event()
    for frame, fds in p.data_to_send():
        t.receive_data(frame, fds)
    t.next_event()
    for frame, fds in t.data_to_send():
        p.receive_data(frame, fds)
    p.next_event()
    p.data_to_send()


def control_handshake_frames() -> tuple[bytes, bytes, bytes]:
    """(challenge, auth, welcome) frames with the harness's fixed key and nonces (seeds)."""
    t, p = _control_pair()
    challenge = t.data_to_send()[0][0]
    p.receive_data(challenge)
    p.next_event()
    auth = p.data_to_send()[0][0]
    t.receive_data(auth)
    t.next_event()
    welcome = t.data_to_send()[0][0]
    return challenge, auth, welcome


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError as e:
        if e.errno == errno.EBADF:
            return False
        raise
    return True


def _control_fds(msg: object) -> list[int]:
    if isinstance(msg, control.Spawn):
        return [msg.fd]
    if isinstance(msg, control.Spawned):
        return [msg.pidfd]
    return []


def _roundtrip_control(msg: control.Message) -> None:
    frame, fds = control.encode(msg)
    again = control.decode(frame[4:], list(fds))
    if again != msg:
        raise Violation("control-roundtrip", f"{msg!r} re-encodes to {again!r}")


def run_control(data: bytes) -> None:
    if len(data) < 3:
        return
    mode, fdspec, size = data[0], data[1], data[2]
    t, p = _control_pair()
    which = mode & 3
    if which in (0, 1):
        _handshake(t, p)
    conn = t if which in (0, 2) else p
    receives = (control.Spawn, control.StatsRequest, control.BadRequest) if conn.role is control.Role.TEMPLATE \
        else (control.Spawned, control.Error, control.Exited, control.StatsReply)
    sent: list[int] = []
    owned: list[int] = []
    try:
        for i, chunk in enumerate(_chunks(data[3:], size)):
            nfds = (fdspec >> (2 * i)) & 3 if i < 4 else 0
            fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(nfds)]
            sent += fds
            try:
                conn.receive_data(chunk, fds)
                for _ in range(10_000):
                    ev = conn.next_event()
                    if ev is None:
                        break
                    owned += _control_fds(ev)
                    if not isinstance(ev, receives):
                        raise Violation("control-event", f"{conn.role.value} got {ev!r}")
                    if not isinstance(ev, control.BadRequest):
                        _roundtrip_control(ev)
            except ControlProtocolError:
                if conn.state is not control.State.CLOSED:
                    raise Violation("control-not-closed", f"ProtocolError left state {conn.state}") from None
                break
        conn.close()
        leaked = [fd for fd in sent if fd not in owned and _is_open(fd)]
        lost = [fd for fd in owned if not _is_open(fd)]
        if leaked or lost:
            raise Violation("control-fds", f"fds leaked {leaked}, owned by events but closed {lost}")
    except Violation:
        raise
    except Exception as e:
        raise unexpected(e) from None
    finally:
        for fd in sent:
            if _is_open(fd):
                os.close(fd)


# ----------------------------------------------------------------------------------------- child


def _encode_child(ev: protocol.Ping | protocol.Redo | protocol.Pong | protocol.Page | protocol.Error) -> bytes:
    """The frame of a decoded message, through the module's per-message encoders."""
    if isinstance(ev, protocol.Ping):
        return protocol.encode_ping(ev.id)
    if isinstance(ev, protocol.Redo):
        return protocol.encode_redo(ev.tag, ev.lsn, ev.base_image, ev.records, ev.pg_version, ev.id,
                                    wal_log_hints=ev.wal_log_hints)
    if isinstance(ev, protocol.Pong):
        return protocol.encode_pong(ev.id)
    if isinstance(ev, protocol.Page):
        return protocol.encode_page(ev.page, ev.id)
    return protocol.encode_error(ev.code, ev.message, ev.id)


def _roundtrip_child(ev: object, responses: bool) -> None:
    if isinstance(ev, protocol.Redo):
        try:
            protocol.validate_redo(ev.tag, ev.lsn, ev.base_image, ev.records, ev.pg_version)
        except (TypeError, protocol.BadRedoRequest):
            return  # the child answers these with bad-request
    if isinstance(ev, protocol.Oversized):
        return
    assert isinstance(ev, (protocol.Ping, protocol.Redo, protocol.Pong, protocol.Page, protocol.Error))
    dec: protocol.ResponseDecoder | protocol.RequestDecoder = \
        protocol.ResponseDecoder() if responses else protocol.RequestDecoder()
    dec.receive_data(_encode_child(ev))
    again = dec.next_event()
    if again != ev:
        raise Violation("child-roundtrip", f"{ev!r:.200} re-encodes to {again!r:.200}")


def run_child(data: bytes) -> None:
    if len(data) < 2:
        return
    mode, size = data[0], data[1]
    responses = bool(mode & 1)
    bound = 1 << 16 if mode & 4 else protocol.MAX_FRAME_SIZE
    dec: protocol.ResponseDecoder | protocol.RequestDecoder = protocol.ResponseDecoder(bound) if responses \
        else protocol.RequestDecoder(bound, refuse_above=4096 if mode & 2 else None)
    allowed: tuple[type, ...] = (protocol.Pong, protocol.Page, protocol.Error) if responses \
        else (protocol.Ping, protocol.Redo, protocol.Oversized)
    try:
        for chunk in _chunks(data[2:], size):
            dec.receive_data(chunk)
            try:
                for _ in range(10_000):
                    ev = dec.next_event()
                    if ev is None:
                        break
                    if not isinstance(ev, allowed):
                        raise Violation("child-event", f"{'response' if responses else 'request'} decoder "
                                                       f"gave {ev!r:.200}")
                    _roundtrip_child(ev, responses)
            except protocol.ProtocolError as e:
                try:
                    dec.next_event()
                except protocol.ProtocolError as again:
                    if again is not e:
                        raise Violation("child-not-broken", f"{e!r} then {again!r}") from None
                else:
                    raise Violation("child-not-broken", f"{e!r}, then the decoder went on") from None
                return
    except Violation:
        raise
    except Exception as e:
        raise unexpected(e) from None


# ---------------------------------------------------------------------------------------- record


def _check_decoded(raw: bytes, rec: xlogrecord.DecodedRecord) -> None:
    tot_len, xid, prev, info, rmid, _crc = xlogrecord._HDR.unpack_from(raw)
    try:
        general = xlogrecord._decode_general(raw, tot_len, xid, prev, info, rmid)
    except RedoError as e:
        raise Violation("record-fast-path", f"fast path accepted what the general decoder refuses: {e}") from None
    if general != rec:
        raise Violation("record-fast-path", f"fast path {rec!r:.300} != general {general!r:.300}")
    if rec.tot_len != len(raw) or list(rec.blocks) != sorted(rec.blocks) or any(
            k > xlogrecord.XLR_MAX_BLOCK_ID or b.block_id != k or b.forknum > xlogrecord.MAX_FORKNUM
            or b.data == b"" for k, b in rec.blocks.items()):
        raise Violation("record-fields", f"{rec!r:.400}")
    for b in rec.blocks.values():
        if b.has_image:
            try:
                image = b.image()
            except RedoError:
                continue
            if len(image) != xlogrecord.BLCKSZ:
                raise Violation("record-image-size", f"block {b.block_id} image of {len(image)} bytes")
    again = xlogrecord.decode_record(encode_record(rec))
    if again._replace(tot_len=0) != rec._replace(tot_len=0):
        raise Violation("record-roundtrip", f"{rec!r:.300} re-encodes to {again!r:.300}")


def run_record(data: bytes) -> None:
    if not data:
        return
    mode, raw = data[0], data[1:]
    if mode & 1 and len(raw) >= 24:
        raw = finish_record(raw)
    try:
        try:
            rec = xlogrecord.decode_record(raw, verify_crc=not mode & 2)
        except RedoError:
            return
        _check_decoded(raw, rec)
    except Violation:
        raise
    except Exception as e:
        raise unexpected(e) from None


# ----------------------------------------------------------------------------------------- apply


def run_apply(data: bytes) -> None:
    inp = inputs.decode_apply(data)
    if inp is None:
        return
    tag, base, records = inp.request()
    try:
        page = apply_records(tag, base, records, wal_log_hints=inp.wal_log_hints)
    except RedoError:
        return
    except Exception as e:
        raise unexpected(e) from None
    if type(page) is not bytes:
        raise Violation("apply-result-type", f"apply_records returned {type(page).__name__}")
    problem = page_problem(page, tag.forknum, inp.rmgr)
    if problem is not None:
        culprit = _culprit(inp, page)
        fault = problem.split(":", 1)[0]
        source = culprit.split(":", 1)[0] if culprit.startswith(("fpi:", "base-kind:")) else \
            culprit if culprit in ("base", "?") else f"redo:{culprit}"
        raise Violation(f"invalid-page/{fault}/{source}", f"{problem} (source {culprit}, tag {tuple(tag)}, "
                                                          f"access method rmgr {inp.rmgr})")


def _culprit(inp: inputs.ApplyInput, page: bytes) -> str:
    """Which part of the request made the answer invalid (the last part of a violation's signature):

    - ``base``: the offending line pointer is the base page's own, untouched by the records, on a page of
      the same kind;
    - ``fpi:REC``: record REC restored a full-page image of the page that is not valid;
    - ``base-kind:REC``: REC was replayed onto a page that is not of its access method's kind (a special
      space of another size) and left it invalid;
    - ``REC``: REC turned a valid page into an invalid one (e.g. changed its kind, or wrote a bad line
      pointer): a redo routine's own fault (signature ``redo:REC``);
    - ``?``: no prefix of the records gives an invalid page (none seen so far).

    Prefixes are replayed whole (``records[:i + 1]`` onto the base page), not one record at a time onto the
    previous answer: the engine checks a base page more strictly than a page it built itself.
    The signature keeps the source class (and the record for ``redo:``), so one hole is one signature.
    """
    tag, base, records = inp.request()
    problem = page_problem(page, tag.forknum, inp.rmgr)
    bad = bad_line_pointer(page, tag.forknum, inp.rmgr) if problem and problem.startswith("line-pointer") else None
    if bad is not None and base is not None and len(base) == 8192 and \
            page_kind(base, tag.forknum, inp.rmgr) == page_kind(page, tag.forknum, inp.rmgr):
        pos = 24 + 4 * (bad[0] - 1)
        if base[pos:pos + 4] == page[pos:pos + 4]:
            return "base"
    before = base
    for i in range(len(records)):
        try:
            after = apply_records(tag, base, records[: i + 1], wal_log_hints=inp.wal_log_hints)
        except RedoError:
            continue  # e.g. a first record that does not build the page (Btree/REUSE_PAGE): no page yet
        if page_problem(after, tag.forknum, inp.rmgr) is not None:
            raw = records[i][1]
            name = record_name(raw[17], raw[16]).replace(" ", "_")
            for b in xlogrecord.decode_record(raw, verify_crc=False).blocks.values():
                if b.tag == tag and b.has_image and b.apply_image and \
                        page_problem(b.image(), tag.forknum, inp.rmgr) is not None:
                    return f"fpi:{name}"
            if before is not None and page_kind(before, tag.forknum, inp.rmgr)[0].startswith("unknown"):
                return f"base-kind:{name}"
            return name
        before = after
    return "?"


def _valid_sources(inp: inputs.ApplyInput) -> bool:
    """Whether every page the request brings in is valid: the base page and each full-page image of the
    page a record carries for redo to apply."""
    tag = inp.tag
    if inp.base is not None and (len(inp.base) != 8192 or page_problem(inp.base, tag.forknum, inp.rmgr)):
        return False
    for _lsn, raw in inp.request()[2]:
        try:
            blocks = xlogrecord.decode_record(raw, verify_crc=False).blocks.values()
            for b in blocks:
                if b.tag == tag and b.has_image and b.apply_image and \
                        page_problem(b.image(), tag.forknum, inp.rmgr) is not None:
                    return False
        except RedoError:
            continue  # the engine refuses this record itself
    return True


def run_apply_valid(data: bytes) -> None:
    """``apply`` restricted to requests whose base page and full-page images are valid (others are
    uninteresting inputs): what is left to make a page invalid are the redo routines, i.e. the faults that
    stay once the engine validates what comes in (apply_records' page validation)."""
    inp = inputs.decode_apply(data)
    if inp is None or not _valid_sources(inp):
        return
    run_apply(data)


# -------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Target:
    name: str
    run: Callable[[bytes], None]
    seeds: Callable[[dict[str, Any]], list[bytes]]
    max_len: int
    # structure-aware mutator (data, max_size, byte_mutator, rng) -> mutant; None: bytes only
    mutate: Callable[[bytes, int, ByteMutate, random.Random], bytes] | None = None
    # the committed corpus it reads (tests/data/fuzz-corpus/<corpus>): its own unless it shares one
    shares_corpus: str | None = None

    @property
    def corpus(self) -> str:
        return self.shares_corpus or self.name


def _record_seeds(doc: dict[str, Any]) -> list[bytes]:
    best: dict[tuple[int, int, bool], list[bytes]] = {}
    for _start, _end, raw in doc["records"]:
        rec = xlogrecord.decode_record(raw, verify_crc=False)
        checked = any(b.has_image and not b.apply_image for b in rec.blocks.values())
        applied = any(b.has_image and b.apply_image for b in rec.blocks.values())
        best.setdefault((rec.rmid, rec.info, applied), []).append(strip_check_images(raw))
        if checked:
            best.setdefault((rec.rmid, -1, True), []).append(raw)  # a few with check images: image() paths
    return [b"\x01" + raw for key in sorted(best) for raw in sorted(best[key], key=len)[:2]]


def _child_seeds(doc: dict[str, Any]) -> list[bytes]:
    reqs = inputs.apply_seeds(doc, per_key=1)
    small = sorted(reqs, key=lambda r: len(inputs.encode_apply(r)))[:6]
    frames = [protocol.encode_ping(), protocol.encode_ping(7)]
    for i, r in enumerate(small):
        tag, base, recs = r.request()
        frames.append(protocol.encode_redo(tag, recs[-1][0], base, recs, id=i, wal_log_hints=bool(i & 1)))
    page = next((r.base for r in small if r.base is not None), bytes(8192))
    responses = [protocol.encode_pong(1), protocol.encode_page(page, 2), protocol.encode_error("internal", "x", 3),
                 protocol.encode_error("too-large", "y")]
    out = [b"\x00\x00" + f for f in frames] + [b"\x01\x00" + f for f in responses]
    out += [b"\x02\x05" + b"".join(frames[:3]), b"\x04\x11" + b"".join(frames[:2]), b"\x01\x07" + b"".join(responses)]
    return out


def _control_seeds(doc: dict[str, Any]) -> list[bytes]:
    tenant = "0123456789abcdef0123456789abcdef"
    requests = [control.encode(control.Spawn(1, tenant, {"memory": 256, "x": None}, 0))[0],
                control.encode(control.StatsRequest(2))[0],
                control.encode(control.Spawn(3, tenant + "-00ff", {}, 0))[0]]
    replies = [control.encode(control.Spawned(1, 4242, 0))[0],
               control.encode(control.Error(2, "fork-failed", "no"))[0],
               control.encode(control.Exited(4242, -9))[0],
               control.encode(control.StatsReply(3, {"spawns": 1, "live": 0}))[0]]
    challenge, auth, welcome = control_handshake_frames()
    return [
        b"\x00\x01\x00" + requests[0], b"\x00\x00\x00" + requests[1], b"\x00\x05\x10" + b"".join(requests),
        b"\x01\x01\x00" + replies[0], b"\x01\x00\x00" + b"".join(replies[1:]), b"\x01\x01\x09" + b"".join(replies),
        b"\x02\x00\x00" + auth + requests[1], b"\x02\x04\x00" + auth + requests[0],
        b"\x03\x00\x00" + challenge + welcome + replies[2],
    ]


def _apply_seeds(doc: dict[str, Any]) -> list[bytes]:
    return [inputs.encode_apply(inp) for inp in inputs.apply_seeds(doc)]


def _mutate_record(data: bytes, max_size: int, mutate: ByteMutate, rng: random.Random) -> bytes:
    """Half the time a field of the decoded record (re-encoded, so it still decodes), else the bytes."""
    if len(data) > 1 and rng.randrange(2):
        new = mutate_record_fields(data[1:], mutate, rng)
        if new is not None and len(new) < max_size:
            return data[:1] + new
    return mutate(data, max_size)


def _mutate_control(data: bytes, max_size: int, mutate: ByteMutate, rng: random.Random) -> bytes:
    """Mostly the stream; sometimes the mode, fd and chunk bytes alone."""
    if len(data) >= 3 and rng.randrange(8) == 0:
        head = bytearray(data[:3])
        head[rng.randrange(3)] = rng.randrange(256)
        return bytes(head) + data[3:]
    return data[:3] + mutate(data[3:], max(0, max_size - 3)) if len(data) >= 3 else mutate(data, max_size)


TARGETS: dict[str, Target] = {
    "control": Target("control", run_control, _control_seeds, 4096, _mutate_control),
    "child": Target("child", run_child, _child_seeds, 65536),
    "record": Target("record", run_record, _record_seeds, 32768, _mutate_record),
    "apply": Target("apply", run_apply, _apply_seeds, 65536, mutate_apply),
    "apply-valid": Target("apply-valid", run_apply_valid, _apply_seeds, 65536, mutate_apply, "apply"),
}
