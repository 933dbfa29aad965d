"""TemplateClient as a service client: liveness of a stuck template, per-call spawn deadlines, reconnecting
to a restarted template, errors that say what happened, and the ergonomics of launch/connect.

Real templates and children (the echo worker). Every template a test starts is stopped (and reaped) by the
test; a template stopped with SIGSTOP is continued or killed, by the pid of the process the test (or its
client) started. Every wait is bounded by a generous "never hangs" limit; no timing is asserted.
"""

import asyncio
import errno
import logging
import os
import resource
import signal
import subprocess
import sys
import time

import psutil
import pytest
from proc_guard import proc_guard  # noqa: F401  (fixture)
from test_client import REPO, WORKER, exited, ping, tenant

from forkserver import ChildHandle, TemplateClient, TemplateUnavailable
from forkserver.client import ChildState
from forkserver.errors import SpawnTimeout
from forkserver.pool import MAX_POOL_SIZE

HANG = 60  # seconds: any wait longer than this is a hang


def _ours_and_alive(pid: int, mark: str) -> bool:
    """The process ``pid`` still runs and is the one we started (its command line mentions ``mark``)."""
    try:
        p = psutil.Process(pid)
        return p.status() != psutil.STATUS_ZOMBIE and mark in " ".join(p.cmdline())
    except psutil.NoSuchProcess:
        return False


def _release(pid: int, mark: str) -> None:
    """Cleanup for a template a test stopped: continue it if it still runs (its client stops it)."""
    if _ours_and_alive(pid, mark):
        os.kill(pid, signal.SIGCONT)


class Launcher:
    """``scripts/walredo-template`` on one socket path, started and stopped by the test (run twice for a
    restart on the same path, as systemd's ``Restart=always`` would)."""

    def __init__(self, path: str, *extra: str):
        self.path = path
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> int:
        self.proc = subprocess.Popen([os.path.join(REPO, "scripts", "walredo-template"), "--socket", self.path,
                                      "--worker", WORKER, *self.extra], stdout=subprocess.PIPE, cwd=REPO)
        line = await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, self.proc.stdout.readline),
                                      HANG)
        assert line.startswith(b"walredo-template ready"), line
        return self.proc.pid

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)  # in case the test stopped it; not yet reaped, so still ours
            proc.terminate()
        try:
            await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, proc.wait), HANG)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()


@pytest.fixture
async def launcher(tmp_path, proc_guard):  # noqa: F811
    sockdir = proc_guard.watch_dir(str(tmp_path / "tpl"))
    lau = Launcher(os.path.join(sockdir, "ctl.sock"))
    try:
        yield lau
    finally:
        await lau.stop()


async def _spawn_until_ok(client: TemplateClient, t: str, tries: int = 40) -> ChildHandle:
    last: BaseException | None = None
    for _ in range(tries):  # bounded: the reconnect backs off to at most 2 s between attempts
        try:
            return await client.spawn(t, timeout=2.0)
        except TemplateUnavailable as e:
            last = e
    raise AssertionError(f"no spawn succeeded in {tries} tries: {last}")


# ------------------------------------------------------------------------------------------------ liveness


async def test_stuck_launched_template_is_killed_and_restarted(proc_guard):  # noqa: F811
    """A SIGSTOPped template is noticed by the liveness probe long before spawn_timeout: it is SIGKILLed
    and restarted; the spawn in flight fails typed (or completes on the new template); children of the stuck
    template keep serving. (Before: the spawn waited the whole spawn_timeout and nothing was restarted.)"""
    async with asyncio.timeout(HANG):
        c = await TemplateClient.launch(worker=WORKER, spawn_timeout=20.0, liveness_timeout=0.5)
        mark = proc_guard.watch_dir(os.path.dirname(c.socket_path))
        old = c.template_pid
        try:
            warm = await c.spawn(tenant(1))
            os.kill(old, signal.SIGSTOP)
            try:
                child = await c.spawn(tenant(2))
                child.close()  # completed on the new template: fine too
            except TemplateUnavailable as e:
                assert not isinstance(e, SpawnTimeout), e  # noticed, not timed out
                assert "stuck" in str(e)
            assert c.restarts >= 1 or c.template_pid is None  # restarting or restarted, not waited out
            fresh = await c.spawn(tenant(3))
            assert c.template_pid not in (None, old) and c.restarts >= 1
            assert not _ours_and_alive(old, mark)  # killed (and reaped by the client)
            assert (await ping(fresh)).startswith(b"pong %d" % fresh.pid)
            assert (await ping(warm)) == f"pong {warm.pid} {warm.tenant}\n".encode()
            for ch in (warm, fresh):
                ch.close()
            assert await fresh.wait() == 0
            with pytest.raises(TemplateUnavailable):
                await warm.wait()  # its template is gone: the exit is observed, its status is not
            assert warm.state is ChildState.UNKNOWN
        finally:
            _release(old, mark)
            await c.aclose()


async def test_stuck_connected_template_fails_spawn_and_reconnects(launcher):
    """Connect mode: a stuck template cannot be killed by us; the spawn waiting on it fails with
    TemplateUnavailable once the probe gives up, and the client reconnects once it answers again."""
    async with asyncio.timeout(HANG):
        pid = await launcher.start()
        async with TemplateClient.connect(launcher.path, key=launcher.path + ".key", spawn_timeout=20.0,
                                          liveness_timeout=0.5) as c:
            os.kill(pid, signal.SIGSTOP)
            try:
                with pytest.raises(TemplateUnavailable) as e:
                    await c.spawn(tenant(1))
                assert "stuck" in str(e.value) and not isinstance(e.value, SpawnTimeout)
            finally:
                os.kill(pid, signal.SIGCONT)  # the launcher we started, not reaped: still its pid
            child = await _spawn_until_ok(c, tenant(2))
            assert c.template_pid == pid and c.restarts >= 1
            assert (await ping(child)).startswith(b"pong")
            child.close()
            assert await child.wait() == 0


async def test_busy_template_is_not_declared_stuck(proc_guard):  # noqa: F811
    """Many spawns at once on a short liveness_timeout: the template answers, so nothing is restarted."""
    async with asyncio.timeout(HANG):
        async with TemplateClient.launch(worker=WORKER, liveness_timeout=0.2, pool_size=0) as c:
            proc_guard.watch_dir(os.path.dirname(c.socket_path))
            old = c.template_pid
            children = await asyncio.gather(*(c.spawn(tenant(i)) for i in range(60)))
            assert c.restarts == 0 and c.template_pid == old
            for ch in children:
                ch.close()
            await asyncio.gather(*(ch.wait() for ch in children))


# --------------------------------------------------------------------------------------- per-call deadline


async def test_spawn_timeout_parameter(proc_guard):  # noqa: F811
    async with asyncio.timeout(HANG):
        c = await TemplateClient.launch(worker=WORKER)
        mark = proc_guard.watch_dir(os.path.dirname(c.socket_path))
        pid = c.template_pid
        try:
            with pytest.raises(TypeError):
                await c.spawn(tenant(1), timeout="1")
            with pytest.raises(ValueError):
                await c.spawn(tenant(1), timeout=float("nan"))
            for left in (0, -1.0):  # nothing left of the caller's deadline: fails before any I/O
                with pytest.raises(SpawnTimeout):
                    await c.spawn(tenant(1), timeout=left)
            assert (await c.stats())["spawns"] == 0
            os.kill(pid, signal.SIGSTOP)
            try:
                with pytest.raises(SpawnTimeout) as e:
                    await c.spawn(tenant(2), timeout=0.3)  # shorter than the liveness timeout: no probe yet
                assert isinstance(e.value, TimeoutError) and isinstance(e.value, TemplateUnavailable)
                assert "caller's timeout" in str(e.value)
            finally:
                os.kill(pid, signal.SIGCONT)
            child = await c.spawn(tenant(3), timeout=HANG)
            assert c.template_pid == pid and c.restarts == 0
            child.close()
            assert await child.wait() == 0
        finally:
            _release(pid, mark)
            await c.aclose()


# ------------------------------------------------------------------------------------------------ reconnect


async def test_connect_reconnects_after_template_restart(launcher):
    """The template restarts on the same socket path (a new key in PATH.key): spawns during the outage
    fail typed, never hang; after it, spawns work again on the same client; children keep serving."""
    async with asyncio.timeout(HANG):
        first = await launcher.start()
        async with TemplateClient.connect(launcher.path, key=launcher.path + ".key") as c:
            before = await c.spawn(tenant(1))
            inflight = [asyncio.ensure_future(c.spawn(tenant(10 + i))) for i in range(10)]
            await asyncio.sleep(0)
            await launcher.stop()
            for r in await asyncio.gather(*inflight, return_exceptions=True):
                assert isinstance(r, (ChildHandle, TemplateUnavailable)), r
                if isinstance(r, ChildHandle):
                    r.close()
            with pytest.raises(TemplateUnavailable) as e:
                await c.spawn(tenant(2), timeout=0.5)
            assert "the template connection was lost" not in str(e.value) or "did not come back" in str(e.value)
            second = await launcher.start()
            assert second != first
            child = await _spawn_until_ok(c, tenant(3))
            assert c.template_pid == second and c.restarts >= 1
            assert (await ping(child)).startswith(b"pong %d" % child.pid)
            assert (await ping(before)) == f"pong {before.pid} {before.tenant}\n".encode()
            child.close()
            before.close()
            assert await child.wait() == 0


@pytest.mark.parametrize("as_path", [True, False], ids=["key-file-path", "raw-key"])
async def test_reconnect_with_a_stable_key_file(tmp_path, proc_guard, as_path):  # noqa: F811
    """``--key-file`` (the service mode): a key file we wrote survives the restart, so the client
    reconnects with the key it read once (raw bytes) as well as by re-reading the file."""
    sockdir = proc_guard.watch_dir(str(tmp_path / "tpl"))
    key = os.urandom(32)
    key_file = tmp_path / "template.key"
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, key.hex().encode() + b"\n")
    os.close(fd)
    lau = Launcher(os.path.join(sockdir, "ctl.sock"), "--key-file", str(key_file))
    try:
        async with asyncio.timeout(HANG):
            await lau.start()
            async with TemplateClient.connect(lau.path, key=str(key_file) if as_path else key) as c:
                before = await c.spawn(tenant(1))
                await lau.stop()
                assert key_file.exists()  # a stable key file is never removed
                second = await lau.start()
                child = await _spawn_until_ok(c, tenant(2))
                assert c.template_pid == second and c.restarts >= 1
                assert (await ping(child)).startswith(b"pong")
                assert (await ping(before)).startswith(b"pong")
                for ch in (child, before):
                    ch.close()
                assert await child.wait() == 0
    finally:
        await lau.stop()


async def test_reconnect_reports_a_missing_key_file(launcher):
    """While the template is down its key file is gone (the launcher removes it): a spawn that gives up
    says so, naming the file."""
    async with asyncio.timeout(HANG):
        await launcher.start()
        key_file = launcher.path + ".key"
        async with TemplateClient.connect(launcher.path, key=key_file) as c:
            await launcher.stop()
            assert not os.path.exists(key_file)
            messages = []
            for _ in range(20):
                with pytest.raises(TemplateUnavailable) as e:
                    await c.spawn(tenant(1), timeout=0.3)
                messages.append(str(e.value))
                if key_file in messages[-1]:
                    break
            assert key_file in messages[-1], messages


async def test_key_file_errors_name_the_path(tmp_path, launcher):
    await launcher.start()
    missing = str(tmp_path / "no-such.key")
    with pytest.raises(FileNotFoundError) as e:
        await TemplateClient.connect(launcher.path, key=missing)
    assert e.value.filename == missing
    bad = tmp_path / "bad.key"
    bad.write_text("not hex at all\n")
    with pytest.raises(ValueError, match="bad.key"):
        await TemplateClient.connect(launcher.path, key=str(bad))
    short = tmp_path / "short.key"
    short.write_text("abcd\n")
    with pytest.raises(ValueError, match="short.key"):
        await TemplateClient.connect(launcher.path, key=short)
    with pytest.raises(ValueError):
        TemplateClient.connect(launcher.path, key=b"short")  # a raw key: refused by the call itself


# ----------------------------------------------------------------------------------- errors that say what


async def test_unloadable_worker_reaches_the_caller(proc_guard):  # noqa: F811
    for worker, what in (("no_such_module_xyz:main", "ModuleNotFoundError"),
                         ("tests.echo_worker:no_such_function", "AttributeError")):
        with pytest.raises(TemplateUnavailable) as e:
            await TemplateClient.launch(worker=worker)
        assert "cannot load worker" in str(e.value) and what in str(e.value), e.value


async def test_template_stderr_still_reaches_ours_after_readiness(capfd, proc_guard):  # noqa: F811
    """The launcher's stderr is a pipe we read until it is ready; afterwards it is still copied to ours
    (a pipe nobody drains would stall the template)."""
    async with TemplateClient.launch(worker=WORKER, sandbox=False) as c:  # --no-sandbox warns on stderr
        proc_guard.watch_dir(os.path.dirname(c.socket_path))
        child = await c.spawn(tenant(1))
        child.close()
        await child.wait()
    assert "--no-sandbox" in capfd.readouterr().err


# ---------------------------------------------------------------------------------------------- ergonomics


async def test_async_with_launch_and_connect(launcher, proc_guard):  # noqa: F811
    async with TemplateClient.launch(worker=WORKER) as c:
        proc_guard.watch_dir(os.path.dirname(c.socket_path))
        sockdir = os.path.dirname(c.socket_path)
        child = await c.spawn(tenant(1))
        child.close()
        assert await child.wait() == 0
    assert c.state.value == "closed" and not os.path.exists(sockdir)
    c2 = await TemplateClient.launch(worker=WORKER)  # plain await still works
    proc_guard.watch_dir(os.path.dirname(c2.socket_path))
    await c2.aclose()
    pid = await launcher.start()
    async with TemplateClient.connect(launcher.path, key=launcher.path + ".key") as c3:
        assert c3.template_pid == pid
    assert c3.state.value == "closed"


async def test_pool_size_is_validated_before_anything_starts(proc_guard):  # noqa: F811
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    for bad in (-1, MAX_POOL_SIZE + 1, 100_000):
        with pytest.raises(ValueError, match="pool_size"):
            TemplateClient.launch(worker=WORKER, pool_size=bad)
    with pytest.raises(TypeError):
        TemplateClient.launch(worker=WORKER, pool_size=2.5)
    with pytest.raises(ValueError):
        TemplateClient.launch(worker=WORKER, pool_size=1, pool=1)
    assert {p.pid for p in me.children(recursive=True)} == before
    async with TemplateClient.launch(worker=WORKER, pool_size=3) as c:
        proc_guard.watch_dir(os.path.dirname(c.socket_path))
        for _ in range(100):  # bounded: the pool fills right after the template is ready
            if (await c.stats()).get("idle") == 3:
                break
            await asyncio.sleep(0.05)
        assert (await c.stats()).get("idle") == 3


# ------------------------------------------------------------------------------------------------- holes


async def test_emfile_on_a_spawn_reply_fails_that_spawn_only(proc_guard):  # noqa: F811
    """Out of descriptors when the `spawned` reply's pidfd arrives: that spawn fails with EMFILE, the child
    forked for it ends, and the session (and the healthy template) stay. (Before: the session was dropped
    as a protocol error and the template restarted.)"""
    async with asyncio.timeout(HANG):
        async with TemplateClient.launch(worker=WORKER) as c:
            proc_guard.watch_dir(os.path.dirname(c.socket_path))
            old = c.template_pid
            warm = await c.spawn(tenant(1))
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            fillers: list[int] = []
            task = asyncio.ensure_future(c.spawn(tenant(2)))
            await asyncio.sleep(0)  # the request went out; its reply is not read before we yield again
            try:
                limit = max(map(int, os.listdir("/proc/self/fd"))) + 16
                resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
                try:
                    for _ in range(limit):  # bounded by the limit just set (free numbers below it are filled too)
                        fillers.append(os.open(os.devnull, os.O_RDONLY))
                except OSError as e:
                    assert e.errno == errno.EMFILE
                else:
                    raise AssertionError("never ran out of descriptors")
                with pytest.raises(OSError) as e:
                    await task
                assert e.value.errno == errno.EMFILE, e.value
                assert not isinstance(e.value, TemplateUnavailable)
            finally:
                for fd in fillers:
                    os.close(fd)
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            assert c.template_pid == old and c.restarts == 0
            child = await c.spawn(tenant(3))
            assert (await ping(child)).startswith(b"pong")
            assert (await ping(warm)).startswith(b"pong")
            for ch in (warm, child):
                ch.close()
                assert await ch.wait() == 0
            for _ in range(200):  # the child forked for the failed spawn saw EOF and was reaped
                if (await c.stats())["live"] == 0:
                    break
                await asyncio.sleep(0.02)
            assert (await c.stats())["live"] == 0


async def test_child_of_a_lost_template_logs_no_error(caplog, proc_guard):  # noqa: F811
    """A walredo process whose template died: its exit status is lost; closing it logs no ERROR (no "could
    not reap" traceback), and its handle says UNKNOWN."""
    from forkserver.process import WalRedoProcess

    caplog.set_level(logging.DEBUG, logger="forkserver")
    async with asyncio.timeout(HANG):
        async with TemplateClient.launch(worker="walredo_template.worker:main") as c:
            proc_guard.watch_dir(os.path.dirname(c.socket_path))
            handle = await c.spawn(tenant(1))
            process = WalRedoProcess(handle, tenant=tenant(1))
            await process.ping()
            os.kill(c.template_pid, signal.SIGKILL)  # our own template, not yet reaped
            for _ in range(200):
                if handle.state is ChildState.UNKNOWN:
                    break
                await asyncio.sleep(0.02)
            assert handle.state is ChildState.UNKNOWN
            await process.aclose()
            assert exited(handle.pid)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


def test_no_client_thread_left_blocking_interpreter_exit():
    """The stderr copier is a daemon thread: a script that launches, spawns and exits without aclose still
    exits (bounded), leaving nothing running."""
    script = (
        "import asyncio\nfrom forkserver import TemplateClient\n"
        "async def main():\n"
        "    c = await TemplateClient.launch(worker='tests.echo_worker:main')\n"
        "    k = await c.spawn('0' * 32)\n"
        "    print(c.template_pid, k.pid, flush=True)\n"
        "    await c.aclose(); k.close(); await asyncio.sleep(0.1)\n"
        "asyncio.run(main())\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, timeout=HANG)
    assert out.returncode == 0, out.stderr
    for pid in map(int, out.stdout.split()):
        for _ in range(200):  # bounded: the child ends on EOF, then its new parent reaps it
            if exited(pid):
                break
            time.sleep(0.02)
        assert exited(pid)


async def test_failing_restart_says_why(tmp_path, proc_guard, monkeypatch):  # noqa: F811
    """A launched template that cannot come back (its worker module vanished): a spawn that gives up waiting
    carries the launcher's own message, not just "failed"."""
    mod = tmp_path / "vanishing_worker2.py"
    mod.write_text("from tests.echo_worker import main\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    async with asyncio.timeout(HANG):
        async with TemplateClient.launch(worker="vanishing_worker2:main", spawn_timeout=1.0) as c:
            proc_guard.watch_dir(os.path.dirname(c.socket_path))
            mod.unlink()
            os.kill(c.template_pid, signal.SIGKILL)  # our own template, not yet reaped
            messages = []
            for _ in range(10):  # bounded: the first may still go to the dying template
                with pytest.raises(TemplateUnavailable) as e:
                    await c.spawn(tenant(1))
                messages.append(str(e.value))
                if "cannot load worker" in messages[-1]:
                    break
            assert "cannot load worker vanishing_worker2:main" in messages[-1], messages
            assert isinstance(e.value, SpawnTimeout)


async def test_stuck_template_noticed_by_callers_with_short_deadlines(proc_guard):  # noqa: F811
    """Every caller's deadline is shorter than liveness_timeout (a manager passing what is left of a short
    request_timeout): a spawn that times out on a quiet template still starts the probe, so the stuck
    template is replaced and a later spawn succeeds."""
    async with asyncio.timeout(HANG):
        c = await TemplateClient.launch(worker=WORKER, liveness_timeout=0.5)
        mark = proc_guard.watch_dir(os.path.dirname(c.socket_path))
        old = c.template_pid
        try:
            os.kill(old, signal.SIGSTOP)
            child = None
            for _ in range(100):  # bounded: about 0.2 s each
                try:
                    child = await c.spawn(tenant(1), timeout=0.2)
                    break
                except TemplateUnavailable:
                    pass
            assert child is not None, "the stuck template was never replaced"
            assert c.restarts >= 1 and c.template_pid != old and not _ours_and_alive(old, mark)
            child.close()
            assert await child.wait() == 0
        finally:
            _release(old, mark)
            await c.aclose()
