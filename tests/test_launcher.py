"""The ``walredo-template`` launcher as an operator runs it (real processes): bad input refused before anything
is touched, a prompt and complete SIGTERM, a stable key file, sd_notify, metrics, logs, the status command."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request

import psutil
import pytest
from proc_guard import proc_guard  # noqa: F401  (fixture)
from test_template import TENANT, RawClient, ping

from forkserver import control
from forkserver.pool import MAX_POOL_SIZE

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHER = os.path.join(REPO, "scripts", "walredo-template")
WORKER = "tests.echo_worker:main"
TENANTS = [f"{i:032x}" for i in range(1, 4)]


def _run(args, env=None, timeout=60):
    full_env = dict(os.environ)
    full_env.pop("WALREDO_TEMPLATE_POOL", None)
    full_env.update(env or {})
    return subprocess.run([LAUNCHER, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env=full_env)


class Started:
    """A launcher started in the background: its readiness fields, stderr collected at stop()."""

    def __init__(self, args, env=None):
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.proc = subprocess.Popen([LAUNCHER, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, cwd=REPO, env=full_env, text=True)
        line = self.proc.stdout.readline()
        assert line.startswith("walredo-template ready "), (line, self.stop_now())
        self.fields = dict(kv.split("=", 1) for kv in line.split()[2:])
        self.stderr = ""

    def key(self) -> bytes:
        with open(self.fields["key"]) as f:
            return bytes.fromhex(f.read().strip())

    def stop(self, timeout=10) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        _, self.stderr = self.proc.communicate(timeout=timeout)
        return self.proc.returncode

    def stop_now(self) -> str:
        self.proc.kill()
        return self.proc.communicate(timeout=10)[1]


@pytest.fixture
def sockdir(tmp_path, proc_guard):  # noqa: F811
    d = tmp_path / "tpl"
    d.mkdir(mode=0o700)
    os.chmod(d, 0o700)
    proc_guard.watch_dir(str(d))
    return d


def _snapshot(d):
    return {p.name: (p.lstat().st_mode, p.lstat().st_mtime_ns, p.lstat().st_size) for p in d.iterdir()}


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kind", ["regular file", "directory", "symlink", "fifo"])
def test_socket_path_that_is_not_a_socket_is_refused_untouched(sockdir, kind):
    path = sockdir / "ctl.sock"
    if kind == "regular file":
        path.write_text("precious data\n")
    elif kind == "directory":
        path.mkdir()
    elif kind == "symlink":
        (sockdir / "target").write_text("precious data\n")
        path.symlink_to(sockdir / "target")
    else:
        os.mkfifo(path)
    before = _snapshot(sockdir)
    out = _run(["--socket", str(path), "--worker", WORKER])
    assert out.returncode == 2, out
    assert "exists and is not a socket" in out.stderr and str(path) in out.stderr
    assert _snapshot(sockdir) == before  # nothing replaced, no key file written
    if kind in ("regular file", "symlink"):
        assert path.read_text() == "precious data\n"


def test_listener_never_unlinks_a_file_that_replaced_the_socket(sockdir):
    # The same refusal inside listen() itself (a file that appears after the launcher's own check).
    from forkserver.listener import listen

    path = sockdir / "ctl.sock"
    path.write_text("precious data\n")
    with pytest.raises(FileExistsError, match="not a socket"):
        listen(str(path))
    assert path.read_text() == "precious data\n"


@pytest.mark.parametrize("args, env, needle", [
    (["--pool", str(MAX_POOL_SIZE + 1)], {}, f"--pool must be from 0 to {MAX_POOL_SIZE}, got {MAX_POOL_SIZE + 1}"),
    (["--pool", "-1"], {}, "--pool must be from 0 to"),
    (["--pool", "many"], {}, "argument --pool: invalid int value"),
    ([], {"WALREDO_TEMPLATE_POOL": "100000"}, "WALREDO_TEMPLATE_POOL must be an integer from 0 to 256, got '100000'"),
    ([], {"WALREDO_TEMPLATE_POOL": "lots"}, "WALREDO_TEMPLATE_POOL must be an integer"),
    (["--metrics-port", "70000"], {}, "--metrics-port must be from 0 to 65535"),
    (["--log-level", "loud"], {}, "argument --log-level: invalid choice"),
])
def test_bad_arguments_exit_2_before_touching_anything(sockdir, args, env, needle):
    path = sockdir / "ctl.sock"
    out = _run(["--socket", str(path), "--worker", WORKER, *args], env=env)
    assert out.returncode == 2, out
    assert needle in out.stderr, out.stderr
    assert list(sockdir.iterdir()) == []  # no socket, no key file


@pytest.mark.parametrize("worker, needle", [
    ("json:dumps", "must take (sock, tenant)"),  # one positional argument and keyword-only options
    ("no_such_module_xyz:main", "ModuleNotFoundError"),
    ("walredo_template.worker", "MODULE:FUNCTION"),
])
def test_a_worker_that_cannot_serve_exits_2_at_start(sockdir, worker, needle):
    out = _run(["--socket", str(sockdir / "ctl.sock"), "--worker", worker])
    assert out.returncode == 2, out
    assert "cannot load worker" in out.stderr and needle in out.stderr, out.stderr
    assert list(sockdir.iterdir()) == []


def test_explicit_pool_wins_over_a_bad_environment(sockdir):
    t = Started(["--socket", str(sockdir / "ctl.sock"), "--worker", WORKER, "--pool", "0"],
                env={"WALREDO_TEMPLATE_POOL": "lots"})
    assert t.stop() == 0


def test_unusable_key_file_exits_3_naming_it_untouched(sockdir, tmp_path):
    key = tmp_path / "open.key"
    key.write_text("ab" * 32 + "\n")
    key.chmod(0o644)
    before = key.stat()
    out = _run(["--socket", str(sockdir / "ctl.sock"), "--worker", WORKER, "--key-file", str(key)])
    assert out.returncode == 3, out
    assert str(key) in out.stderr and "accessible to others" in out.stderr
    after = key.stat()
    assert (before.st_mode, before.st_mtime_ns) == (after.st_mode, after.st_mtime_ns)
    assert list(sockdir.iterdir()) == []  # refused before the socket was bound


def test_taken_metrics_port_exits_3_leaving_no_socket(sockdir):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        out = _run(["--socket", str(sockdir / "ctl.sock"), "--worker", WORKER, "--metrics-port", str(port)])
    assert out.returncode == 3, out
    assert "cannot set up" in out.stderr
    assert list(sockdir.iterdir()) == []


def test_stale_socket_is_replaced_with_a_warning(sockdir):
    path = sockdir / "ctl.sock"
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(path))
    dead.close()  # a socket file nobody listens on: what a killed template leaves
    t = Started(["--socket", str(path), "--worker", WORKER])
    assert stat.S_ISSOCK(path.lstat().st_mode)
    assert t.stop() == 0
    assert re.search(rf"WARNING forkserver\.listener\[\d+\]: replaced the stale socket {re.escape(str(path))}",
                     t.stderr), t.stderr


# ------------------------------------------------------------------------------------------------ SIGTERM


def _descendants() -> set[int]:
    out = set()
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                out.add(p.pid)
        except psutil.NoSuchProcess:
            pass
    return out


def test_sigterm_with_the_largest_pool_exits_promptly_leaving_nothing(sockdir):
    before = _descendants()
    path = sockdir / "ctl.sock"
    t = Started(["--socket", str(path), "--worker", WORKER, "--pool", str(MAX_POOL_SIZE)])
    time.sleep(0.05)  # the pool is filling: tens of children forked, most of them still to come
    forked = len(psutil.Process(t.proc.pid).children())
    sent = time.monotonic()
    t.proc.send_signal(signal.SIGTERM)
    try:
        t.proc.wait(timeout=10)  # bounded either way; the figure is asserted below
    finally:
        took = time.monotonic() - sent
        rc = t.stop()
    assert rc == 0, t.stderr
    # The service promise is 1 s (measured 0.03 s on a quiet machine with one fork per loop turn); the test
    # bounds a hang, with room for a loaded CI machine, and prints the figure.
    print(f"SIGTERM with --pool {MAX_POOL_SIZE}: exited in {took:.3f} s, {forked} children forked when sent")
    assert took < 5.0, f"SIGTERM took {took:.2f} s with {forked} children forked when it was sent"
    # Nothing left: no pool child (the test is their subreaper: an orphan would be ours now), no files.
    assert _descendants() - before == set()
    assert list(sockdir.iterdir()) == []


def test_sigterm_during_set_up_is_a_clean_stop(sockdir):
    # The stop signals are held off until the template's handlers are in place: whenever SIGTERM comes after
    # the worker loaded, the socket and key file go with the template.
    path = sockdir / "ctl.sock"
    proc = subprocess.Popen([LAUNCHER, "--socket", str(path), "--worker", WORKER], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=REPO, text=True)
    deadline = time.monotonic() + 30
    while not path.exists() and time.monotonic() < deadline:  # bound: the set-up is under way
        time.sleep(0.001)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert list(sockdir.iterdir()) == []


# --------------------------------------------------------------------------------------------- key file


def test_key_file_is_created_reused_across_restarts_and_kept(sockdir, tmp_path):
    path = str(sockdir / "ctl.sock")
    key_file = tmp_path / "keys" / "template.key"
    key_file.parent.mkdir(mode=0o700)
    keys = []
    for start in range(2):
        t = Started(["--socket", path, "--worker", WORKER, "--key-file", str(key_file)])
        assert t.fields["key"] == str(key_file)
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        keys.append(t.key())
        c = RawClient(path, keys[-1])  # authenticates with the file's key
        c.send(control.StatsRequest(1))
        assert c.next(control.StatsReply).stats["pid"] == t.proc.pid
        c.close()
        assert t.stop() == 0
        assert key_file.exists() and not os.path.exists(path)  # the socket goes, the key file stays
        assert ("created the key file" if start == 0 else "reusing the key file") in t.stderr
    assert keys[0] == keys[1]


def test_default_key_is_fresh_and_removed(sockdir):
    path = str(sockdir / "ctl.sock")
    keys = []
    for _ in range(2):
        t = Started(["--socket", path, "--worker", WORKER])
        assert t.fields["key"] == path + ".key"
        keys.append(t.key())
        assert t.stop() == 0
        assert not os.path.exists(path + ".key")
    assert keys[0] != keys[1]


# ------------------------------------------------------------------------------------------- sd_notify


def test_notify_ready_after_bind_and_stopping_at_shutdown(sockdir, tmp_path):
    notify_path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(notify_path)
        manager.settimeout(10)
        path = sockdir / "ctl.sock"
        t = Started(["--socket", str(path), "--worker", WORKER], env={"NOTIFY_SOCKET": notify_path})
        assert manager.recv(256) == b"READY=1"
        assert stat.S_ISSOCK(path.lstat().st_mode)  # bound before it said so
        c = RawClient(str(path), t.key())  # and serving
        c.close()
        t.proc.send_signal(signal.SIGTERM)
        assert manager.recv(256) == b"STOPPING=1"
        assert t.stop() == 0
        manager.settimeout(0.2)
        with pytest.raises(TimeoutError):
            manager.recv(256)  # nothing else


# -------------------------------------------------------------------------------------- logs and metrics


def _scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        return r.read().decode()


def _metric(text: str, name: str) -> float:
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    assert m, (name, text)
    return float(m.group(1))


def test_metrics_port_serves_the_template_counters(sockdir):
    path = str(sockdir / "ctl.sock")
    t = Started(["--socket", path, "--worker", WORKER, "--metrics-port", "0", "--pool", "1"])
    try:
        address = t.fields["metrics"]
        host, port = address.rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) > 0
        text = _scrape(address)
        for name in ("walredo_template_spawns_total", "walredo_template_fork_failures_total",
                     "walredo_template_pool_refills_total", "walredo_template_pool_hits_total",
                     "walredo_template_pool_misses_total", "walredo_template_live_children",
                     "walredo_template_idle_children", "walredo_template_pool_size",
                     "walredo_template_connections", "process_resident_memory_bytes"):
            assert f"\n{name} " in text, name
        c = RawClient(path, t.key())
        parents = [c.spawn(i, tenant) for i, tenant in enumerate(TENANTS)]
        try:
            for ev, parent in zip([c.next(control.Spawned) for _ in TENANTS], parents):
                os.close(ev.pidfd)
                assert ping(parent).startswith(b"pong %d" % ev.pid)  # its hygiene is done
                # the child holds stdio and its socket: none of the endpoint's sockets
                others = [os.readlink(f"/proc/{ev.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{ev.pid}/fd")
                          if int(fd) > 2]
                assert len(others) == 1 and others[0].startswith("socket:"), others
            text = _scrape(address)
            assert _metric(text, "walredo_template_spawns_total") == 3
            assert _metric(text, "walredo_template_live_children") == 3
            assert _metric(text, "walredo_template_pool_hits_total") + _metric(
                text, "walredo_template_pool_misses_total") == 3
            assert _metric(text, "walredo_template_pool_refills_total") >= 1
        finally:
            for p in parents:
                p.close()
        for _ in TENANTS:
            c.next(control.Exited)
        c.close()
    finally:
        assert t.stop() == 0


def test_prometheus_client_is_not_imported_by_the_template_without_metrics():
    code = ("import sys, forkserver.launcher, forkserver.template; "
            "print(sorted(m for m in ('prometheus_client', 'asyncio', 'psutil') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.stdout.strip() == "[]", out


def test_lifecycle_lines_name_tenant_and_pid(sockdir):
    path = str(sockdir / "ctl.sock")
    t = Started(["--socket", path, "--worker", WORKER, "--log-level", "info"])
    c = RawClient(path, t.key())
    parent = c.spawn(1)
    ev = c.next(control.Spawned)
    assert ping(parent).startswith(b"pong")
    parent.sendall(b"exit 5\n")
    assert c.next(control.Exited) == control.Exited(ev.pid, 5)
    os.close(ev.pidfd)
    parent.close()
    c.close()
    assert t.stop() == 0
    log = t.stderr
    ts = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    assert re.search(rf"^{ts} INFO forkserver\.template\[{t.proc.pid}\]: tenant {TENANT} pid {ev.pid}: spawned",
                     log, re.M), log
    assert re.search(rf"^{ts} WARNING forkserver\.template\[{t.proc.pid}\]: tenant {TENANT} pid {ev.pid}: "
                     r"exited with status 5", log, re.M), log
    assert re.search(rf"INFO forkserver\.template\[{t.proc.pid}\]: exiting", log), log
    assert "walredo-template[" not in log  # the old print-based lines are gone


def test_log_level_warning_is_quiet(sockdir):
    path = str(sockdir / "ctl.sock")
    t = Started(["--socket", path, "--worker", WORKER, "--log-level", "warning"])
    assert t.stop() == 0
    assert t.stderr == ""


# ------------------------------------------------------------------------------------------------ status


def test_status_lists_every_live_tenant_with_its_memory(sockdir):
    path = str(sockdir / "ctl.sock")
    t = Started(["--socket", path, "--worker", WORKER, "--pool", "1"])
    c = RawClient(path, t.key())
    parents = [c.spawn(i, tenant) for i, tenant in enumerate(TENANTS)]
    spawned = {ev.pid: ev for ev in (c.next(control.Spawned) for _ in TENANTS)}
    try:
        for p in parents:
            assert ping(p).startswith(b"pong")
        out = _run(["status", "--socket", path, "--json"])
        assert out.returncode == 0, out
        result = json.loads(out.stdout)
        children = {ch["tenant"]: ch for ch in result["children"]}
        assert set(children) == set(TENANTS)
        assert {ch["pid"] for ch in children.values()} == set(spawned)
        for ch in children.values():
            if os.geteuid() == 0:  # root reads the smaps of the (not dumpable) sandboxed children
                assert ch["memory_source"] == "smaps" and ch["uss"] > 0 and ch["pss"] > 0, ch
            assert ch["rss"] > 0 and 0 <= ch["uptime"] < 60
        assert result["template"]["pid"] == t.proc.pid and result["template"]["live"] == 3
        assert result["children_omitted"] == 0

        out = _run(["status", "--socket", path])
        assert out.returncode == 0, out
        lines = out.stdout.splitlines()
        assert lines[0].startswith(f"template pid {t.proc.pid} on {path}")
        header = lines[1].split()
        assert header == ["tenant", "pid", "uptime", "uss_mib", "pss_mib", "rss_mib"]
        rows = {line.split()[0]: line.split() for line in lines[2:2 + len(TENANTS)]}
        assert set(rows) == set(TENANTS)
        for row in rows.values():
            if os.geteuid() == 0:
                assert float(row[3]) > 0, row  # USS
        assert lines[-1].startswith("memory:")
    finally:
        for p in parents:
            p.close()
        for _ in TENANTS:
            c.next(control.Exited)
        for ev in spawned.values():
            os.close(ev.pidfd)
        c.close()
        assert t.stop() == 0


def test_status_with_a_stable_key_file_and_without_a_template(sockdir, tmp_path):
    path = str(sockdir / "ctl.sock")
    key_file = str(tmp_path / "stable.key")
    out = _run(["status", "--socket", path, "--key-file", key_file])
    assert out.returncode == 3 and f"cannot read the key file {key_file}" in out.stderr, out
    t = Started(["--socket", path, "--worker", WORKER, "--key-file", key_file])
    out = _run(["status", "--socket", path, "--key-file", key_file])
    assert out.returncode == 0 and "no tenant children" in out.stdout, out
    out = _run(["status", "--socket", path])  # default key: SOCKET.key, which this template did not write
    assert out.returncode == 3 and "cannot read the key file" in out.stderr, out
    assert t.stop() == 0
    out = _run(["status", "--socket", path, "--key-file", key_file])  # the key stays, the template is gone
    assert out.returncode == 3 and "cannot query the template" in out.stderr, out


def test_help_names_every_flag_and_the_status_command():
    out = _run(["--help"])
    assert out.returncode == 0
    for flag in ("--socket", "--worker", "--pool", "--key-file", "--log-level", "--metrics-port",
                 "--metrics-host", "--child-memory-limit", "--child-user", "--no-sandbox", "status"):
        assert flag in out.stdout, flag
    out = _run(["status", "--help"])
    assert out.returncode == 0 and "--json" in out.stdout and "--key-file" in out.stdout


def test_status_says_when_only_rss_was_readable():
    from forkserver import template_status

    children = [{"memory_source": "smaps"}, {"memory_source": "statm"}]
    note = template_status._memory_note(children)
    assert "RSS only for 1 of 2 children" in note and "statm" in note and "CAP_SYS_PTRACE" in note
    assert "smaps_rollup" in template_status._memory_note(children[:1])


def test_a_library_launched_template_does_not_notify_the_service_manager(tmp_path, monkeypatch, proc_guard):  # noqa: F811
    # A pageserver that is itself a Type=notify service has NOTIFY_SOCKET in its environment; the template it
    # launches (TemplateClient.launch: --parent-fd) must not speak for it. The readiness line still works.
    import asyncio

    from forkserver.client import TemplateClient

    notify_path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(notify_path)
        monkeypatch.setenv("NOTIFY_SOCKET", notify_path)

        async def run() -> dict:
            client = await TemplateClient.launch(WORKER, pool=0)
            try:
                return await client.stats()
            finally:
                await client.aclose()

        stats = asyncio.run(run())
        assert stats["pool_size"] == 0 and stats["children"] == []
        manager.settimeout(0.2)
        with pytest.raises(TimeoutError):
            manager.recv(256)
