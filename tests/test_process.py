"""forkserver.process.WalRedoProcess against real forked walredo children on real socketpairs, with a stand-in
engine (the real worker and engine: tests/test_process_real.py)."""

import asyncio
import os
import signal
import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from walredo_child import fork_child

from forkserver import ProcessBroken, ProcessClosed, ProcessState, RedoFailed, WalRedoProcess
from walredo_template import BufferTag, worker
from walredo_template import protocol as p
from walredo_template.pg import errors as pg_errors

TAG = BufferTag(1663, 5, 16384, 0, 7)
PAGE = bytes(8192)


def tag_engine(tag, base_image, records, **_):
    """Stand-in engine (the real one is exercised in tests/test_process_real.py): a page naming its tag,
    with a short pause so requests pile up in flight."""
    time.sleep(0.0005)
    if records and records[0][1] == b"bad":
        raise pg_errors.InvalidRecord("bad record")
    return struct.pack(">5I", *tag) * (8192 // 20) + bytes(8192 % 20)


def expected_page(tag):
    return struct.pack(">5I", *tag) * (8192 // 20) + bytes(8192 % 20)


@pytest.fixture
async def spawn(monkeypatch):
    """Fork real children running ``target`` (default: the walredo worker with the stand-in engine);
    every process and child is closed, killed and reaped at the end."""
    monkeypatch.setattr(worker, "apply_records", tag_engine)
    made = []

    async def make(target=worker.main):
        child = fork_child(target)
        proc = WalRedoProcess(child, tenant="t")
        made.append((child, proc))
        return child, proc

    yield make
    for child, proc in made:
        await proc.aclose()
        child.cleanup()  # closes the test's socket reference; the child is already reaped


async def test_ping_and_stats(spawn):
    child, proc = await spawn()
    await proc.ping()
    await proc.ping()
    s = proc.stats()
    assert (s.pid, s.tenant, s.state, s.requests_served, s.in_flight) == (child.pid, "t", ProcessState.RUNNING, 2, 0)
    assert s.last_request_at is not None and s.last_request_at >= s.started_at
    assert await proc.aclose() == -signal.SIGKILL
    assert proc.state is ProcessState.CLOSED and proc.stats().exit_status == -signal.SIGKILL


async def test_pipelined_requests_match_in_order(spawn):
    _, proc = await spawn()
    tags = [TAG._replace(blknum=i) for i in range(200)]
    pages = await asyncio.gather(*(proc.redo(t, 100, None, [(100, b"r")]) for t in tags))
    assert pages == [expected_page(t) for t in tags]
    assert proc.requests_served == 200 and proc.in_flight == 0


async def test_one_cancelled_of_100_leaves_99_correct(spawn):
    _, proc = await spawn()
    tags = [TAG._replace(blknum=i) for i in range(100)]
    tasks = [asyncio.create_task(proc.redo(t, 100, None, [(100, b"r")])) for t in tags]
    await asyncio.sleep(0)  # every request is written and queued
    assert proc.in_flight == 100
    tasks[37].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[37], asyncio.CancelledError)
    for i, (t, r) in enumerate(zip(tags, results)):
        if i != 37:
            assert r == expected_page(t)
    # The cancelled request's response was read and dropped; the stream is still in step.
    assert proc.in_flight == 0 and proc.requests_served == 100
    assert await proc.redo(TAG, 1, None, [(1, b"r")]) == expected_page(TAG)


async def test_many_cancellations_keep_the_stream_in_step(spawn):
    _, proc = await spawn()
    tags = [TAG._replace(blknum=i) for i in range(100)]
    tasks = [asyncio.create_task(proc.redo(t, 100, None, [(100, b"r")])) for t in tags]
    await asyncio.sleep(0)
    for i in range(0, 100, 3):
        tasks[i].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for i, (t, r) in enumerate(zip(tags, results)):
        if i % 3 == 0:
            assert isinstance(r, asyncio.CancelledError)
        else:
            assert r == expected_page(t)
    await proc.ping()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cancelled=st.sets(st.integers(0, 39)), yields=st.integers(0, 3))
def test_any_set_of_cancellations_keeps_the_rest_correct(monkeypatch, cancelled, yields):
    monkeypatch.setattr(worker, "apply_records", tag_engine)
    child = fork_child(worker.main)

    async def scenario():
        proc = WalRedoProcess(child)
        try:
            tags = [TAG._replace(blknum=i) for i in range(40)]
            tasks = [asyncio.create_task(proc.redo(t, 1, None, [(1, b"r")])) for t in tags]
            for _ in range(yields):  # cancel at different points: queued, written, partly answered
                await asyncio.sleep(0)
            for i in cancelled:
                tasks[i].cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for i, (t, r) in enumerate(zip(tags, results)):
                # A cancel that lands after the response arrived is too late: the page is returned.
                if not (i in cancelled and isinstance(r, asyncio.CancelledError)):
                    assert r == expected_page(t)
            await proc.ping()
        finally:
            await proc.aclose()

    try:
        asyncio.run(scenario())
    finally:
        child.cleanup()


async def test_redo_error_does_not_break_the_stream(spawn):
    _, proc = await spawn()
    bad = asyncio.create_task(proc.redo(TAG, 1, None, [(1, b"bad")]))
    wrong_version = asyncio.create_task(proc.redo(TAG, 1, PAGE, [], pg_version=16))
    good = asyncio.create_task(proc.redo(TAG, 1, None, [(1, b"r")]))
    with pytest.raises(RedoFailed) as e1:
        await bad
    with pytest.raises(RedoFailed) as e2:
        await wrong_version
    assert (e1.value.code, e1.value.message) == ("invalid-record", "bad record")
    assert e2.value.code == "unsupported-pg-version"
    assert await good == expected_page(TAG)
    assert proc.state is ProcessState.RUNNING


async def test_bad_arguments_raise_before_any_io(spawn):
    _, proc = await spawn()
    with pytest.raises(ValueError):
        await proc.redo(TAG, 1, b"short", [])
    with pytest.raises(ValueError):
        await proc.redo(TAG, 1, None, [])
    with pytest.raises(TypeError):
        await proc.redo(TAG, 1, None, [(1, "str")])
    with pytest.raises(ValueError):
        await proc.redo(TAG[:3], 1, None, [(1, b"r")])
    assert proc.in_flight == 0 and proc.requests_served == 0
    await proc.ping()


async def test_child_sigkilled_fails_every_pending_request(spawn):
    child, proc = await spawn()
    tasks = [asyncio.create_task(proc.redo(TAG._replace(blknum=i), 1, None, [(1, b"r")])) for i in range(200)]
    await asyncio.sleep(0)
    child.kill(signal.SIGKILL)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    # Some may have been answered before the kill landed; every other one fails with the broken error.
    broken = [r for r in results if isinstance(r, BaseException)]
    assert broken and all(type(r) is ProcessBroken for r in broken)
    assert all(r == expected_page(TAG._replace(blknum=i)) for i, r in enumerate(results) if isinstance(r, bytes))
    assert proc.state is ProcessState.BROKEN and proc.in_flight == 0
    with pytest.raises(ProcessBroken):
        await proc.ping()
    assert await proc.aclose() == -signal.SIGKILL


async def test_child_exit_is_broken(spawn):
    child, proc = await spawn(lambda sock, tenant: None)  # a worker that returns at once: EOF
    with pytest.raises(ProcessBroken):
        await proc.ping()
    assert await proc.aclose() == 0


async def test_sigstopped_child_times_out_and_close_kills_it(spawn):
    child, proc = await spawn()
    await proc.ping()
    child.kill(signal.SIGSTOP)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await proc.ping()
    # The timed-out request's slot is still queued: the stream would stay in step if the child resumed.
    assert proc.in_flight == 1
    assert await proc.aclose() == -signal.SIGKILL  # SIGKILL ends a stopped process too


async def test_close_fails_pending_and_later_requests_and_is_idempotent(spawn):
    child, proc = await spawn()
    child.kill(signal.SIGSTOP)  # nothing will be answered
    pending = asyncio.create_task(proc.ping())
    await asyncio.sleep(0)
    statuses = await asyncio.gather(proc.aclose(), proc.aclose())
    assert statuses == [-signal.SIGKILL] * 2
    with pytest.raises(ProcessClosed):
        await pending
    with pytest.raises(ProcessClosed):
        await proc.ping()
    proc.close()
    assert await proc.aclose() == -signal.SIGKILL
    assert issubclass(ProcessClosed, ProcessBroken)  # a request racing a close is retried by the manager


async def test_aclose_cancelled_still_reaps(spawn):
    child, proc = await spawn()
    child.kill(signal.SIGSTOP)
    task = asyncio.create_task(proc.aclose())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await proc.aclose() == -signal.SIGKILL


def garbage_worker(sock, tenant):
    sock.setblocking(True)
    sock.recv(100)
    sock.sendall(b"\x00\x00\x00\x02\xc1\xc1")
    sock.recv(100)  # until the parent drops us


def wrong_id_worker(sock, tenant):
    sock.setblocking(True)
    sock.recv(100)
    sock.sendall(p.encode_pong(12345))
    sock.recv(100)


def unsolicited_worker(sock, tenant):
    sock.setblocking(True)
    sock.sendall(p.encode_pong(0))
    sock.recv(100)


def page_for_ping_worker(sock, tenant):
    sock.setblocking(True)
    sock.recv(100)
    sock.sendall(p.encode_page(PAGE, 0))
    sock.recv(100)


@pytest.mark.parametrize("target", [garbage_worker, wrong_id_worker, page_for_ping_worker])
async def test_misbehaving_child_breaks_the_process(spawn, target):
    child, proc = await spawn(target)
    with pytest.raises(ProcessBroken):
        await proc.ping()
    assert proc.state is ProcessState.BROKEN
    # The child was killed (it was still alive, blocked in recv) and is reaped.
    assert await proc.aclose() == -signal.SIGKILL


async def test_unsolicited_response_breaks_the_process(spawn):
    child, proc = await spawn(unsolicited_worker)
    async with asyncio.timeout(30):
        while proc.state is ProcessState.RUNNING:
            await asyncio.sleep(0.001)
    assert proc.state is ProcessState.BROKEN
    with pytest.raises(ProcessBroken):
        await proc.ping()
    assert await proc.aclose() == -signal.SIGKILL


async def test_large_requests_go_through_the_write_buffer(spawn):
    _, proc = await spawn()
    big = os.urandom(3 << 20)  # far above the socket buffer: exercises partial writes
    tags = [TAG._replace(blknum=i) for i in range(8)]
    pages = await asyncio.gather(*(proc.redo(t, 1, None, [(1, big)]) for t in tags), proc.ping())
    assert pages[:-1] == [expected_page(t) for t in tags]


async def test_cancelled_while_its_frame_is_still_being_written(spawn):
    _, proc = await spawn()
    big = os.urandom(3 << 20)
    tags = [TAG._replace(blknum=i) for i in range(6)]
    tasks = [asyncio.create_task(proc.redo(t, 1, None, [(1, big)])) for t in tags]
    await asyncio.sleep(0)  # queued; the first frames are partly in the socket, the rest buffered
    tasks[0].cancel()  # its frame is mid-write: it must still go out whole
    tasks[4].cancel()  # its frame has not started: it must still go out, or the ids would shift
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for i, (t, r) in enumerate(zip(tags, results)):
        if i in (0, 4):
            assert isinstance(r, asyncio.CancelledError)
        else:
            assert r == expected_page(t)
    await proc.ping()
    assert proc.requests_served == 7


async def test_each_failed_request_gets_its_own_exception_and_traceback(spawn):
    """Pending and later requests used to receive the one stored ProcessBroken instance. Re-raising one
    instance prepends every raiser's frames to its traceback: 50 failed callers built one traceback of all
    their frames (each holding its caller's records and base image alive) and printed it in every log."""
    import traceback

    child, proc = await spawn()
    child.kill(signal.SIGSTOP)  # nothing will be answered
    pending = [asyncio.create_task(proc.ping()) for _ in range(50)]
    await asyncio.sleep(0)
    await proc.aclose()
    later = []
    for _ in range(50):
        try:
            await proc.ping()
        except ProcessClosed as exc:
            later.append(exc)
    errors = await asyncio.gather(*pending, return_exceptions=True) + later
    assert all(isinstance(e, ProcessClosed) for e in errors)
    assert len({id(e) for e in errors}) == len(errors)
    assert max(len(traceback.extract_tb(e.__traceback__)) for e in errors) < 10


# --- record LSNs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "lsn, records",
    [
        (5, [(10, b"r")]),  # the record ends after the LSN the page is asked at
        (100, [(20, b"r"), (10, b"r")]),  # out of order
        (100, [(10, b"r"), (10, b"r")]),  # two records cannot end at the same LSN
        (0, [(1, b"r")]),
    ],
)
async def test_record_lsns_out_of_order_or_past_the_request_lsn_raise_before_any_io(spawn, lsn, records):
    """These used to reach the child, and the engine answered a page as if the LSNs were right."""
    child, proc = await spawn()
    with pytest.raises(ValueError, match="LSN"):
        await proc.redo(TAG, lsn, None, records)
    assert proc.in_flight == 0 and proc.requests_served == 0
    assert await proc.redo(TAG, 100, None, [(10, b"r"), (100, b"r")]) == expected_page(TAG)  # at the last one


# --- who ended it -----------------------------------------------------------------------------------------


def _wait_dead_without_the_loop(pid: int, timeout: float = 10.0) -> None:
    """Block (the event loop does not run, so the EOF the child's death left stays unread) until ``pid`` is
    dead (a zombie: this test process is its parent and has not reaped it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return
        time.sleep(0.002)
    raise AssertionError(f"child {pid} still alive {timeout} s after SIGKILL")


async def test_close_of_a_live_child_is_ours_and_on_stop_runs_once(spawn):
    stops = []
    child = fork_child(worker.main)
    proc = WalRedoProcess(child, tenant="t", on_stop=stops.append)
    try:
        await proc.ping()
        proc.close()
        assert stops == [proc] and proc.state is ProcessState.CLOSED and not proc.broke_first
        assert await proc.aclose() == -signal.SIGKILL
        assert stops == [proc] and not proc.stats().broke_first
    finally:
        await proc.aclose()
        child.cleanup()


async def test_child_killed_by_someone_else_broke_first_even_if_close_came_before_its_eof(spawn):
    """The manager counts stops by what happened to the child. A child killed by a signal this side did not
    send, and closed (say, as idle) before the reader saw its EOF, used to look like our own kill."""
    child, proc = await spawn()
    await proc.ping()
    child.kill(signal.SIGKILL)
    _wait_dead_without_the_loop(child.pid)
    assert proc.state is ProcessState.RUNNING  # nothing has read the EOF yet
    proc.close()
    assert proc.broke_first
    assert await proc.aclose() == -signal.SIGKILL


async def test_child_killed_and_seen_by_the_reader_broke_first(spawn):
    stops = []
    child = fork_child(worker.main)
    proc = WalRedoProcess(child, tenant="t", on_stop=stops.append)
    try:
        await proc.ping()
        child.kill(signal.SIGKILL)
        async with asyncio.timeout(30):
            while proc.state is ProcessState.RUNNING:
                await asyncio.sleep(0.005)
        assert proc.state is ProcessState.BROKEN and proc.broke_first and stops == [proc]
        proc.close()
        assert stops == [proc]  # once
    finally:
        await proc.aclose()
        child.cleanup()


async def test_log_lines_name_the_tenant_from_the_handle_and_the_pid(caplog):
    import logging

    child = fork_child(lambda sock, tenant: None)  # returns at once: the stream breaks (EOF)
    child.tenant = "ab" * 16  # as a ChildHandle carries it
    proc = WalRedoProcess(child)  # no tenant given: the handle's
    try:
        assert proc.tenant == "ab" * 16
        with caplog.at_level(logging.WARNING, logger="forkserver.process"):
            with pytest.raises(ProcessBroken):
                await proc.ping()
        lines = [r.getMessage() for r in caplog.records if r.name == "forkserver.process"]
        assert lines and all(line.startswith(f"tenant {'ab' * 16} pid {child.pid}: ") for line in lines)
    finally:
        await proc.aclose()
        child.cleanup()
