"""forkserver.client.TemplateClient with real templates and real children (echo worker)."""

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest
from proc_guard import proc_guard  # noqa: F401  (fixture)

from forkserver import ChildHandle, ControlProtocolError, InvalidTenantId, TemplateClient, TemplateUnavailable
from forkserver.client import ChildState

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = "tests.echo_worker:main"
# The launched template imports the worker with our sys.path: make sure `tests.echo_worker` resolves even when
# pytest was not started from the repository root.
if REPO not in sys.path:
    sys.path.append(REPO)


def tenant(i: int, shard: int | None = None) -> str:
    t = f"{i:032x}"
    return t if shard is None else f"{t}-{shard:04x}"


async def ping(child: ChildHandle) -> bytes:
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(child.socket, b"ping\n")
    buf = b""
    while not buf.endswith(b"\n"):
        data = await loop.sock_recv(child.socket, 100)
        assert data, "child closed its socket"
        buf += data
    return buf


def exited(pid: int) -> bool:
    """Gone, or a zombie waiting for its (sub)reaper: either way it no longer runs."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def title(pid: int) -> str:
    return " ".join(psutil.Process(pid).cmdline()).strip()  # setproctitle pads with spaces


@pytest.fixture
async def client(proc_guard):  # noqa: F811
    c = await TemplateClient.launch(worker=WORKER)
    proc_guard.watch_dir(os.path.dirname(c.socket_path))
    try:
        yield c
    finally:
        await c.aclose()


async def test_100_tenants_through_one_client(client):
    tpid = client.template_pid
    children = await asyncio.gather(*(client.spawn(tenant(i, i if i % 2 else None)) for i in range(100)))
    try:
        assert len({c.pid for c in children}) == 100
        answers = await asyncio.gather(*(ping(c) for c in children))
        for i, (c, answer) in enumerate(zip(children, answers)):
            assert answer == f"pong {c.pid} {c.tenant}\n".encode()
            assert c.tenant == tenant(i, i if i % 2 else None)
            assert title(c.pid) == f"walredo {c.tenant}"
            assert psutil.Process(c.pid).ppid() == tpid
        stats = await client.stats()
        assert stats["spawns"] == 100 and stats["live"] == 100
    finally:
        for c in children:
            c.close()
    assert await asyncio.gather(*(c.wait() for c in children)) == [0] * 100
    assert (await client.stats())["live"] == 0


async def test_sigkilled_child_reported_and_reaped(client):
    child = await client.spawn(tenant(1))
    assert (await ping(child)).startswith(b"pong")
    child.kill(signal.SIGKILL)
    assert await child.wait() == -signal.SIGKILL
    assert child.returncode == -signal.SIGKILL and child.state is ChildState.EXITED
    with pytest.raises(psutil.NoSuchProcess):
        psutil.Process(child.pid).status()  # the template reaped it: no zombie
    child.kill(signal.SIGKILL)  # a no-op now, never a stray signal
    child.close()
    assert (await client.stats())["live"] == 0


async def test_wait_is_cancel_safe_and_shared(client):
    child = await client.spawn(tenant(2))
    w1 = asyncio.ensure_future(child.wait())
    w2 = asyncio.ensure_future(child.wait())
    await asyncio.sleep(0.05)
    w1.cancel()
    child.socket.sendall(b"exit 3\n")
    assert await w2 == 3
    with pytest.raises(asyncio.CancelledError):
        await w1
    assert await child.wait() == 3
    child.close()


async def test_bad_arguments_are_refused_before_io(client):
    with pytest.raises(InvalidTenantId):
        await client.spawn("nope")
    with pytest.raises(ValueError):
        await client.spawn(tenant(1), {"x": object()})
    with pytest.raises(TypeError):
        await client.spawn(tenant(1), ["x"])
    assert (await client.stats())["spawns"] == 0
    child = await client.spawn(tenant(1), {"pg_version": 15, "name": "x", "flag": True})
    child.close()
    assert await child.wait() == 0


async def test_children_exiting_at_once_race_the_spawn_reply(client):
    """The `exited` event can arrive in the same read as (or right after) `spawned`, before spawn() resumes:
    the handle is registered synchronously, so wait() still gets the status and nothing hangs."""
    children = await asyncio.gather(*(client.spawn(tenant(i, 0xDEAD)) for i in range(30)))
    assert await asyncio.gather(*(c.wait() for c in children)) == [0] * 30
    for c in children:
        c.close()
    assert (await client.stats())["live"] == 0


async def test_cancelled_spawns_leave_nothing_behind(client):
    tasks = [asyncio.ensure_future(client.spawn(tenant(i))) for i in range(20)]
    await asyncio.sleep(0)
    for t in tasks[::2]:
        t.cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    for r in done:
        if isinstance(r, ChildHandle):
            r.close()
            await r.wait()
        else:
            assert isinstance(r, asyncio.CancelledError)
    # children forked for cancelled requests saw EOF at once; give the template the time to reap them all
    for _ in range(200):
        if (await client.stats())["live"] == 0:
            break
        await asyncio.sleep(0.02)
    assert (await client.stats())["live"] == 0


async def test_template_sigkilled_while_spawns_in_flight(client):
    before = [await client.spawn(tenant(i)) for i in range(3)]
    old_pid = client.template_pid
    inflight = [asyncio.ensure_future(client.spawn(tenant(100 + i))) for i in range(20)]
    await asyncio.sleep(0)
    os.kill(old_pid, signal.SIGKILL)  # our own template's pid (not yet reaped: the client reaps it)
    results = await asyncio.gather(*inflight, return_exceptions=True)
    for r in results:
        assert isinstance(r, (ChildHandle, TemplateUnavailable)), r
    # new spawns work, on a new template
    fresh = await client.spawn(tenant(999))
    assert client.template_pid not in (None, old_pid) and client.restarts >= 1
    assert (await ping(fresh)).startswith(b"pong %d" % fresh.pid)
    # children of the dead template keep answering
    for c in before:
        assert (await ping(c)) == f"pong {c.pid} {c.tenant}\n".encode()
    # their exit status can no longer be reported, but wait() still observes the exit (and says so)
    for c in before + [r for r in results if isinstance(r, ChildHandle)]:
        c.close()
    for c in before:
        with pytest.raises(TemplateUnavailable):
            await c.wait()
        assert c.state is ChildState.UNKNOWN and exited(c.pid)
    fresh.close()
    assert await fresh.wait() == 0


async def test_spawns_during_a_failing_restart_fail_typed_then_recover(tmp_path, proc_guard, monkeypatch):  # noqa: F811
    """The template dies and cannot come back for a while (its worker module vanished): spawns waiting for
    the restart fail with TemplateUnavailable, never hang; once it can start again, spawns work."""
    mod = tmp_path / "vanishing_worker.py"
    mod.write_text("from tests.echo_worker import main\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    c = await TemplateClient.launch(worker="vanishing_worker:main", spawn_timeout=2.0)
    proc_guard.watch_dir(os.path.dirname(c.socket_path))
    try:
        old = c.template_pid
        mod.unlink()
        os.kill(old, signal.SIGKILL)
        with pytest.raises(TemplateUnavailable):
            await c.spawn(tenant(1))
        assert c.template_pid is None
        mod.write_text("from tests.echo_worker import main\n")
        for _ in range(20):  # the restart loop backs off to at most 2 s between attempts
            try:
                child = await c.spawn(tenant(2))
                break
            except TemplateUnavailable:
                continue
        assert (await ping(child)).startswith(b"pong")
        assert c.template_pid not in (None, old)
        child.close()
        assert await child.wait() == 0
    finally:
        await c.aclose()


async def test_closed_client_refuses_and_aclose_is_idempotent(proc_guard):  # noqa: F811
    c = await TemplateClient.launch(worker=WORKER)
    proc_guard.watch_dir(os.path.dirname(c.socket_path))
    child = await c.spawn(tenant(5))
    await asyncio.gather(c.aclose(), c.aclose())
    await c.aclose()
    with pytest.raises(TemplateUnavailable):
        await c.spawn(tenant(6))
    with pytest.raises(TemplateUnavailable):
        await c.stats()
    assert not os.path.exists(os.path.dirname(c.socket_path))
    # the child outlives the template's clean stop and keeps serving until EOF; its handle can still kill it
    assert (await ping(child)).startswith(b"pong")
    child.kill(signal.SIGKILL)
    with pytest.raises(TemplateUnavailable):
        await child.wait()  # observed through the pidfd; the status died with the connection
    assert exited(child.pid)
    child.close()


async def test_aclose_with_spawns_in_flight_fails_them_typed(proc_guard):  # noqa: F811
    c = await TemplateClient.launch(worker=WORKER)
    proc_guard.watch_dir(os.path.dirname(c.socket_path))
    tasks = [asyncio.ensure_future(c.spawn(tenant(i))) for i in range(10)]
    await asyncio.sleep(0)
    await c.aclose()
    for r in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(r, ChildHandle):
            r.close()  # completed before the close; ends on EOF
        else:
            assert isinstance(r, TemplateUnavailable), r


async def test_cancelled_launch_leaves_nothing(proc_guard):  # noqa: F811
    for delay in (0, 0.05, 0.3):
        task = asyncio.ensure_future(TemplateClient.launch(worker=WORKER))
        await asyncio.sleep(delay)
        task.cancel()
        try:
            c = await task
        except asyncio.CancelledError:
            continue
        await c.aclose()  # it won the race


async def test_parent_fds_return_to_baseline(client):
    me = psutil.Process()
    baseline = me.num_fds()
    children = await asyncio.gather(*(client.spawn(tenant(i)) for i in range(20)))
    assert me.num_fds() == baseline + 2 * 20  # each: its socket and its pidfd
    for c in children:
        c.close()
    await asyncio.gather(*(c.wait() for c in children))
    assert me.num_fds() == baseline


async def test_launch_with_unimportable_worker_fails_typed(proc_guard):  # noqa: F811
    with pytest.raises(TemplateUnavailable):
        await TemplateClient.launch(worker="no_such_module_xyz:main")


async def test_connect_to_launcher_template(tmp_path, proc_guard):  # noqa: F811
    sockdir = proc_guard.watch_dir(str(tmp_path / "tpl"))
    path = os.path.join(sockdir, "ctl.sock")
    proc = subprocess.Popen([os.path.join(REPO, "scripts", "walredo-template"), "--socket", path,
                             "--worker", WORKER], stdout=subprocess.PIPE, cwd=REPO)
    try:
        loop = asyncio.get_running_loop()
        line = await loop.run_in_executor(None, proc.stdout.readline)
        assert line.startswith(b"walredo-template ready")
        with pytest.raises(ControlProtocolError) as e:
            await TemplateClient.connect(path, key=bytes(32))
        assert e.value.code == "auth-failed"
        c = await TemplateClient.connect(path, key=path + ".key")
        assert c.template_pid == proc.pid
        child = await c.spawn(tenant(7, 1))
        assert (await ping(child)).startswith(b"pong")  # the title is set before the worker answers
        assert title(child.pid) == f"walredo {tenant(7, 1)}"
        child.close()
        assert await child.wait() == 0
        # no restart for a connected client: the template going away fails requests, never hangs
        proc.send_signal(signal.SIGTERM)
        await loop.run_in_executor(None, proc.wait)
        with pytest.raises(TemplateUnavailable):
            await c.spawn(tenant(8), timeout=1.0)  # connect mode reconnects: bounded by the deadline
        await c.aclose()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
    with pytest.raises(TemplateUnavailable):
        await TemplateClient.connect(path, key=bytes(32))


_PARENT = textwrap.dedent("""
    import asyncio, sys
    from forkserver import TemplateClient
    async def main():
        c = await TemplateClient.launch(worker=sys.argv[1])
        kids = [await c.spawn(f"{i:032x}") for i in range(5)]
        print(c.socket_path, c.template_pid, *[k.pid for k in kids], flush=True)
        await asyncio.sleep(3600)
    asyncio.run(main())
""")


def test_parent_sigkilled_takes_template_and_children_down(proc_guard):  # noqa: F811
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, WORKER], stdout=subprocess.PIPE, cwd=REPO)
    try:
        path, *pids = parent.stdout.readline().split()
        pids = [int(x) for x in pids]
        assert len(pids) == 6
        sockdir = proc_guard.watch_dir(os.path.dirname(path.decode()))
        procs = [psutil.Process(p) for p in pids]
        proc_guard.pids.update(pids)
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()
    killed_at = time.monotonic()
    gone, alive = psutil.wait_procs(procs, timeout=1.0)
    # wait_procs reaps what it can (the template was reparented to us, the subreaper) and treats a zombie
    # whose parent is not us as alive; any survivor after 1 s fails the test.
    alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, (alive, time.monotonic() - killed_at)
    assert not os.path.exists(sockdir)  # the template removed the dead parent's private directory


_PROCESS_EVENTS = {"subprocess.Popen", "os.fork", "os.forkpty", "os.posix_spawn", "os.exec", "os.system"}
_audit_log: list | None = None


def _audit(event, args):
    if _audit_log is not None and event in _PROCESS_EVENTS:
        _audit_log.append((event, threading.get_ident()))


async def test_loop_thread_never_starts_a_process(proc_guard):  # noqa: F811
    """Launch, spawn, restart after a SIGKILL and close: every process start happens off the loop thread
    (audit hooks see Popen/fork/exec wherever they happen)."""
    global _audit_log
    if not getattr(sys, "_walredo_audit_installed", False):
        sys.addaudithook(_audit)  # cannot be removed; inert while _audit_log is None
        sys._walredo_audit_installed = True
    _audit_log = []
    try:
        c = await TemplateClient.launch(worker=WORKER)
        proc_guard.watch_dir(os.path.dirname(c.socket_path))
        child = await c.spawn(tenant(1))
        os.kill(c.template_pid, signal.SIGKILL)
        child.close()  # it exits on EOF; its status is lost with the template
        with pytest.raises(TemplateUnavailable):
            await child.wait()
        child2 = await c.spawn(tenant(2))
        child2.close()
        await child2.wait()
        await c.aclose()
    finally:
        events, _audit_log = _audit_log, None
    loop_thread = threading.get_ident()
    assert any(e == "subprocess.Popen" for e, _ in events)  # the hook does see the launches
    assert [(e, t) for e, t in events if t == loop_thread] == []
