"""forkserver.sandbox with real processes: the walredo child's policy as /proc shows it, the filter's self-test
(each forbidden syscall ends the child with SIGSYS and nothing else), the key kept out of children's memory,
--child-user, the memory limit, and the manager's view of children the sandbox stopped."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import struct
import sys

import pytest
from proc_guard import proc_guard  # noqa: F401  (fixture)
from recordbuilder import _HDR, finish_record

from forkserver import RedoFailed, RedoProcessFailed, TemplateClient, WalRedoManager, sandbox
from forkserver.client import ChildHandle
from walredo_template import BufferTag
from walredo_template.pg.page import page_init

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # `tests.sandbox_worker`

pytestmark = pytest.mark.timeout(120)

SELF_TEST_WORKER = "tests.sandbox_worker:main"
TAG = BufferTag(1663, 5, 16384, 0, 0)
EVIL_LSN = 0xDEAD0000
_n = 0



def _stopped(mgr, cause: str) -> float:
    """``pageserver_wal_redo_processes_stopped_total{cause}``, read as a scrape would (absent: 0)."""
    return mgr.metrics.registry.get_sample_value("pageserver_wal_redo_processes_stopped_total",
                                                 {"cause": cause}) or 0.0


def tenant() -> str:
    global _n
    _n += 1
    return f"{os.getpid():08x}{_n:024x}"


def proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def proc_limits(pid: int) -> dict[str, tuple[str, str]]:
    out = {}
    with open(f"/proc/{pid}/limits") as f:
        next(f)
        for line in f:
            name, soft, hard = line[:26].strip(), line[26:47].strip(), line[47:68].strip()
            out[name] = (soft, hard)
    return out


def fpi_record(page: bytes, method: str) -> bytes:
    """An XLOG FPI record whose one block image is ``page``, compressed with ``method`` (apply flag set)."""
    import lz4.block
    import zstandard

    bit, img = {"lz4": (0x08, lz4.block.compress(page, store_size=False)),
                "zstd": (0x10, zstandard.ZstdCompressor().compress(page)), "none": (0, page)}[method]
    head = struct.pack("<BBH", 0, 0x10, 0) + struct.pack("<HHB", len(img), 0, 0x02 | bit)
    head += struct.pack("<IIII", TAG.spcnode, TAG.dbnode, TAG.relnode, TAG.blknum)
    return finish_record(_HDR.pack(0, 1, 0x1000000, 0xA0, 0, 0) + head + img)


async def command(child: ChildHandle, line: str) -> bytes:
    """Send one command to the self-test worker; its reply line, or b"" if it died first."""
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(child.socket, line.encode() + b"\n")
    reply = b""
    while not reply.endswith(b"\n"):
        chunk = await loop.sock_recv(child.socket, 4096)
        if not chunk:
            return b""
        reply += chunk
    return reply.strip()


@pytest.fixture
async def self_test_client(proc_guard):  # noqa: F811
    # --no-sandbox: this worker enters the sandbox itself (as a custom worker may), after its memory scan.
    client = await TemplateClient.launch(SELF_TEST_WORKER, sandbox=False)
    try:
        yield client
    finally:
        await client.aclose()


# ------------------------------------------------------------------ the walredo child's policy


@pytest.mark.parametrize("pool", [1, 0], ids=["pool-child", "forked-on-request"])
async def test_walredo_child_is_confined_as_proc_shows(proc_guard, pool):  # noqa: F811
    template = await TemplateClient.launch(pool=pool)  # pool 0: the sandbox is entered on the spawn's path
    try:
        async with WalRedoManager(template=template) as mgr:
            t = tenant()
            await mgr.ping(t)
            pid = mgr.processes()[t].pid
            status = proc_status(pid)
            assert status["Seccomp"] == "2" and status["NoNewPrivs"] == "1"
            limits = proc_limits(pid)
            assert limits["Max core file size"] == ("0", "0")
            assert limits["Max open files"] == ("5", "5")
            assert limits["Max processes"] == ("0", "0")
            assert limits["Max address space"] == (str(sandbox.DEFAULT_MEMORY_LIMIT),) * 2
            fds = {int(fd): os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
            assert fds.pop(0) == fds.pop(1) == "/dev/null"
            err = fds.pop(2)  # its own stderr pipe, read by the template (forkserver.childlog)
            assert err.startswith("pipe:") and err != os.readlink(f"/proc/{template.template_pid}/fd/2")
            assert len(fds) == 1 and next(iter(fds.values())).startswith("socket:")
            await mgr.ping(t)
    finally:
        await template.aclose()


async def test_compressed_images_and_bad_input_never_trip_the_filter(proc_guard):  # noqa: F811
    """lz4/zstd decompressors are imported by the preload: restoring such images needs no syscall outside
    the allowlist, nor do the engine's refusals."""
    page = bytearray(8192)
    page_init(page)
    page[200:300] = bytes(range(100))
    async with WalRedoManager(retries=0) as mgr:
        t = tenant()
        pages = [await mgr.request_redo(t, TAG, 0x2000000, None, [(0x2000000, fpi_record(bytes(page), m))])
                 for m in ("lz4", "zstd", "none")]
        assert pages[0] == pages[1] == pages[2]
        pid = mgr.processes()[t].pid
        for junk in (b"\0" * 24, fpi_record(bytes(page), "lz4")[:-10] + b"x" * 10):
            with pytest.raises(RedoFailed):
                await mgr.request_redo(t, TAG, 0x2000000, None, [(0x2000000, junk)])
        await mgr.ping(t)
        assert mgr.processes()[t].pid == pid and proc_status(pid)["Seccomp"] == "2"


async def test_no_sandbox_is_an_opt_out_and_says_so(proc_guard, caplog):  # noqa: F811
    with caplog.at_level(logging.WARNING, logger="forkserver.manager"):
        async with WalRedoManager(sandbox=False) as mgr:
            t = tenant()
            await mgr.ping(t)
            assert proc_status(mgr.processes()[t].pid)["Seccomp"] == "0"
            assert (await mgr.template.stats())["sandbox"] is False
    assert any("WITHOUT their sandbox" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------ self-test of the filter


@pytest.mark.parametrize("what", ["open", "socket", "execve", "fork", "ptrace", "kill1", "dumpable"])
async def test_each_forbidden_syscall_ends_the_child_with_sigsys(self_test_client, what):
    client = self_test_client
    sibling = await client.spawn(tenant())
    assert (await command(sibling, "enter")) == b"entered"
    child = await client.spawn(tenant())
    assert (await command(child, "enter")) == b"entered"
    assert proc_status(child.pid)["Seccomp"] == "2"
    assert (await command(child, f"try {what}")) == b""
    assert await asyncio.wait_for(child.wait(), 10) == -signal.SIGSYS
    # The template and the other children are unaffected.
    assert (await command(sibling, "ping")) == f"pong {sibling.pid}".encode()
    assert (await client.stats())["live"] == 1
    sibling.close()
    assert await asyncio.wait_for(sibling.wait(), 10) == 0


async def test_before_entering_the_child_holds_no_copy_of_the_key(self_test_client):
    client = self_test_client
    xored = bytes(b ^ 0xFF for b in client._key).hex()
    child = await client.spawn(tenant())
    reply = await command(child, f"scan {xored}")
    assert reply.startswith(b"hits 0"), reply
    # Positive control: the scanner finds a copy that is there.
    assert (await command(child, f"plant {xored}")) == b"planted"
    assert not (await command(child, f"scan {xored}")).startswith(b"hits 0")
    child.close()
    await asyncio.wait_for(child.wait(), 10)
    # The same holds for a child forked on request (the pool is empty right after a spawn storm).
    children = [await client.spawn(tenant()) for _ in range(3)]
    for c in children:
        assert (await command(c, f"scan {xored}")).startswith(b"hits 0")
        c.close()
        await asyncio.wait_for(c.wait(), 10)


async def test_a_traceback_in_the_sandbox_does_not_look_for_source_files(self_test_client):
    child = await self_test_client.spawn(tenant())
    assert (await command(child, "enter")) == b"entered"
    assert (await command(child, "try traceback")).startswith(b"survived")
    assert (await command(child, "ping")) == f"pong {child.pid}".encode()
    child.close()
    assert await asyncio.wait_for(child.wait(), 10) == 0


async def test_a_pool_child_is_confined_while_idle_after_its_prepare(proc_guard):  # noqa: F811
    """The policy is entered in the idle phase: before any spawn, the waiting child already runs under it
    (and the worker's prepare(), which opens a file, ran before it)."""
    import psutil

    async with await TemplateClient.launch("tests.sandbox_worker:prepared", pool=1) as client:
        template = psutil.Process(client.template_pid)
        async with asyncio.timeout(10):
            while not (idle := [c for c in template.children() if "walredo (idle)" in " ".join(c.cmdline())]):
                await asyncio.sleep(0.01)
            while proc_status(idle[0].pid)["Seccomp"] != "2":
                await asyncio.sleep(0.01)
        child = await client.spawn(tenant())
        assert child.pid == idle[0].pid
        assert (await command(child, "prepared?")) == b"prepared yes"
        child.close()
        assert await asyncio.wait_for(child.wait(), 10) == 0


async def test_a_key_file_template_keeps_its_generated_key_out_of_children_too(tmp_path, proc_guard):  # noqa: F811
    """The launcher's own key (generated into the page, written to the key file from there) is not in a
    child either; the child gets nothing from the launcher's arguments or environment that holds it."""
    import subprocess

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sockdir = proc_guard.watch_dir(str(tmp_path / "tpl"))
    path = os.path.join(sockdir, "ctl.sock")
    proc = subprocess.Popen([os.path.join(repo, "scripts", "walredo-template"), "--socket", path, "--worker",
                             SELF_TEST_WORKER, "--no-sandbox"], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            cwd=repo)
    try:
        line = proc.stdout.readline().decode()
        assert line.startswith("walredo-template ready "), line
        key_file = dict(kv.split("=", 1) for kv in line.split()[2:])["key"]
        with open(key_file) as f:
            key = bytes.fromhex(f.read().strip())
        async with await TemplateClient.connect(path, key=key_file) as client:
            child = await client.spawn(tenant())
            reply = await command(child, f"scan {bytes(b ^ 0xFF for b in key).hex()}")
            assert reply.startswith(b"hits 0"), reply
            hexed = bytes(b ^ 0xFF for b in key.hex().encode())  # nor its hex form (the key file's text)
            assert (await command(child, f"scan {hexed.hex()}")).startswith(b"hits 0")
            child.close()
            await asyncio.wait_for(child.wait(), 10)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        proc.stdout.close()


@pytest.mark.parametrize("what", ["connect", "procmem", "signal"])
async def test_after_entering_the_template_and_siblings_are_out_of_reach(self_test_client, what):
    client = self_test_client
    sibling = await client.spawn(tenant())
    child = await client.spawn(tenant())
    assert (await command(child, "enter")) == b"entered"
    target = {"connect": client.socket_path, "procmem": str(client.template_pid), "signal": str(sibling.pid)}
    assert (await command(child, f"try {what} {target[what]}")) == b""
    assert await asyncio.wait_for(child.wait(), 10) == -signal.SIGSYS
    assert (await command(sibling, "ping")) == f"pong {sibling.pid}".encode()
    sibling.close()
    await asyncio.wait_for(sibling.wait(), 10)


def test_enter_in_a_plain_fork_and_its_refusals():
    """Without a template: the custom-worker path (enter() compiles the filter itself) and its errors."""
    pid = os.fork()
    if pid == 0:  # never returns into pytest
        code = 4
        try:
            sandbox.enter(memory_limit=1 << 20)  # below what the process maps already: refused, not entered
        except sandbox.SandboxError:
            code = 3 if sandbox.current() is None else 5
        finally:
            os._exit(code)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 3
    pid = os.fork()
    if pid == 0:
        try:
            sandbox.enter(memory_limit=None)  # pytest itself maps more than the walredo default
            os.write(2, b"")  # allowed
            os.getpid()
            open("/etc/hostname")  # not: SIGSYS
        finally:
            os._exit(0)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == -signal.SIGSYS


def test_filter_checks_the_architecture_first():
    sandbox.prepare()
    program = bytes(sandbox._compiled[0])
    code, _jt, _jf, k = struct.unpack_from("<HBBI", program, 0)
    assert (code, k) == (0x20, 4)  # BPF_LD|BPF_W|BPF_ABS of seccomp_data.arch
    code, _jt, _jf, k = struct.unpack_from("<HBBI", program, 8)
    assert code == 0x15 and k == {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}[os.uname().machine]


# ------------------------------------------------------------------ --child-user


@pytest.mark.skipif(os.geteuid() != 0, reason="--child-user needs root")
async def test_child_user_drops_every_id_group_and_capability(proc_guard):  # noqa: F811
    import pwd

    nobody = pwd.getpwnam("nobody")
    async with WalRedoManager(child_user="nobody") as mgr:
        t = tenant()
        await mgr.ping(t)
        status = proc_status(mgr.processes()[t].pid)
        assert status["Uid"].split() == [str(nobody.pw_uid)] * 4
        assert status["Gid"].split() == [str(nobody.pw_gid)] * 4
        assert status["Groups"].strip() == ""
        for cap in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
            assert int(status[cap], 16) == 0, cap
        assert status["Seccomp"] == "2"
        await mgr.ping(t)


# ------------------------------------------------------------------ the manager's view


async def test_sandbox_violation_is_a_broken_process_counted_and_logged(proc_guard, caplog):  # noqa: F811
    async with WalRedoManager(worker="tests.sandbox_worker:walredo_open_on_lsn", retries=0) as mgr:
        t = tenant()
        await mgr.ping(t)
        pid = mgr.processes()[t].pid
        with caplog.at_level(logging.ERROR, logger="forkserver.manager"):
            with pytest.raises(RedoProcessFailed):
                await mgr.request_redo(t, TAG, EVIL_LSN, bytes(8192), [])
            await mgr.ping(t)  # served by a new child
            assert mgr.processes()[t].pid != pid
            await _reaped(mgr)
        assert _stopped(mgr, "sandbox_violation") == 1
        lines = [r.getMessage() for r in caplog.records if "sandbox violation" in r.getMessage()]
        assert len(lines) == 1 and str(pid) in lines[0] and t in lines[0]


async def test_memory_limit_ends_the_child_and_oversized_frames_are_refused(proc_guard, caplog):  # noqa: F811
    limit = 96 << 20
    async with WalRedoManager(worker="tests.sandbox_worker:walredo_hungry_on_lsn", retries=0,
                              child_memory_limit=limit) as mgr:
        t = tenant()
        await mgr.ping(t)
        pid = mgr.processes()[t].pid
        assert proc_limits(pid)["Max address space"] == (str(limit),) * 2
        # A frame announcing more than the limit allows: a typed refusal, the child keeps serving.
        with pytest.raises(RedoFailed) as e:
            await mgr.request_redo(t, TAG, 1, bytes(8192), [(1, bytes(40 << 20))])
        assert e.value.code == "too-large"
        await mgr.ping(t)
        assert mgr.processes()[t].pid == pid
        # An allocation past the limit: MemoryError in the child, which exits; the host never sees it grow.
        with caplog.at_level(logging.ERROR, logger="forkserver.manager"):
            with pytest.raises(RedoProcessFailed):
                await mgr.request_redo(t, TAG, EVIL_LSN, bytes(8192), [])
            await mgr.ping(t)
            assert mgr.processes()[t].pid != pid
            await _reaped(mgr)
        assert _stopped(mgr, "memory_limit") == 1
        assert any("memory limit" in r.getMessage() and str(pid) in r.getMessage() for r in caplog.records)


async def _reaped(mgr: WalRedoManager) -> None:
    # Broken processes are counted once reaped, in the background.
    async with asyncio.timeout(10):
        while mgr._tenants.reapers:
            await asyncio.sleep(0.01)


async def test_fuzzed_records_and_frames_never_trip_the_filter(proc_guard):  # noqa: F811
    """Bad input must cost a typed error (or, for a broken frame, a clean exit), never a SIGSYS: a filter
    kill here would be a syscall missing from the list."""
    import random

    from walredo_tools.capture import load_capture, page_requests

    doc = load_capture(os.path.join(os.path.dirname(__file__), "data", "wal-small", "capture.msgpack"))
    requests = page_requests(doc)
    rnd = random.Random(11)
    async with WalRedoManager(retries=0) as mgr:
        t = tenant()
        await mgr.ping(t)
        pid = mgr.processes()[t].pid
        for req in rnd.sample(requests, 300):
            records = [(lsn, bytearray(raw)) for lsn, raw in req.records]
            _lsn, raw = records[rnd.randrange(len(records))]
            how = rnd.randrange(3)
            if how == 0:
                for _ in range(rnd.randint(1, 8)):
                    raw[rnd.randrange(len(raw))] = rnd.randrange(256)
            elif how == 1:
                del raw[rnd.randrange(1, len(raw)):]
            else:
                raw[24:] = rnd.randbytes(len(raw) - 24)
            try:
                await mgr.request_redo(t, req.tag, req.lsn, req.base_image,
                                       [(lsn, bytes(r)) for lsn, r in records], wal_log_hints=doc["checksums"])
            except RedoFailed:
                pass
        assert mgr.processes()[t].pid == pid  # never broke
        client = mgr.template
        loop = asyncio.get_running_loop()
        for _ in range(20):  # undecodable frames: a `protocol` error, then a clean exit (0), never SIGSYS
            child = await client.spawn(tenant())
            body = rnd.randbytes(rnd.randint(1, 300))
            await loop.sock_sendall(child.socket, struct.pack(">I", len(body)) + body)
            while await loop.sock_recv(child.socket, 65536):
                pass
            child.close()
            assert await asyncio.wait_for(child.wait(), 10) == 0
        assert _stopped(mgr, "sandbox_violation") == 0
