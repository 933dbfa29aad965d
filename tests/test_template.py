"""The template process (forkserver.template, started by the launcher), driven over its real control socket by
a small synchronous client built on the sans-IO protocol: peer checks, bad input, exit events, clean exit."""

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
from proc_guard import proc_guard  # noqa: F401  (fixture)

from forkserver import control, fdpass
from forkserver.control import ControlConnection, Role
from forkserver.errors import ControlProtocolError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = "tests.echo_worker:main"
TENANT = "0123456789abcdef0123456789abcdef"


class Launched:
    def __init__(self, proc, path, key_file):
        self.proc, self.path, self.key_file = proc, path, key_file
        with open(key_file) as f:
            self.key = bytes.fromhex(f.read().strip())

    def num_fds(self) -> int:
        return psutil.Process(self.proc.pid).num_fds()


@pytest.fixture
def template(tmp_path, proc_guard):  # noqa: F811
    sockdir = proc_guard.watch_dir(str(tmp_path / "tpl"))
    path = os.path.join(sockdir, "ctl.sock")
    env = dict(os.environ)
    env.setdefault("WALREDO_TEMPLATE_POOL", "1")  # the pool tests here count one pre-forked child
    proc = subprocess.Popen(
        [os.path.join(REPO, "scripts", "walredo-template"), "--socket", path, "--worker", WORKER],
        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=REPO, env=env,
    )
    try:
        line = proc.stdout.readline().decode()
        assert line.startswith("walredo-template ready "), line
        fields = dict(kv.split("=", 1) for kv in line.split()[2:])
        assert fields["socket"] == path and int(fields["pid"]) == proc.pid
        assert oct(os.stat(sockdir).st_mode & 0o777) == "0o700"
        assert oct(os.stat(path).st_mode & 0o777) == "0o600"
        assert oct(os.stat(fields["key"]).st_mode & 0o777) == "0o600"
        yield Launched(proc, path, fields["key"])
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=10)
        proc.stdout.close()
    assert rc == 0
    assert not os.path.exists(path) and not os.path.exists(path + ".key")


class RawClient:
    """Blocking client: the sans-IO protocol plus fdpass on a plain socket (test only)."""

    def __init__(self, path, key):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.proto = ControlConnection(Role.PARENT, key)
        self.events = []
        while not self.proto.authenticated:
            self._read_once()

    def _flush(self):
        for frame, fds in self.proto.data_to_send():
            n = fdpass.send(self.sock, frame, fds)  # the fds ride on the first byte
            if n < len(frame):
                self.sock.sendall(frame[n:])

    def _read_once(self):
        data, fds = fdpass.recv(self.sock, 65536)
        if not data:
            fdpass.close_fds(fds)
            raise EOFError
        self.proto.receive_data(data, fds)
        while (ev := self.proto.next_event()) is not None:
            self.events.append(ev)
        self._flush()

    def send(self, msg):
        self.proto.send(msg)
        self._flush()

    def next(self, kind=None):
        while True:
            for i, ev in enumerate(self.events):
                if kind is None or isinstance(ev, kind):
                    return self.events.pop(i)
            self._read_once()

    def spawn(self, rid, tenant=TENANT):
        parent, child = socket.socketpair()
        self.send(control.Spawn(rid, tenant, {}, child.fileno()))
        child.close()
        return parent

    def close(self):
        self.proto.close()
        self.sock.close()


def ping(sock) -> bytes:
    sock.settimeout(10)
    sock.sendall(b"ping\n")
    return sock.recv(100)


def test_spawn_ping_exit_event_and_no_zombie(template):
    c = RawClient(template.path, template.key)
    parent = c.spawn(1)
    ev = c.next(control.Spawned)
    assert ev.request_id == 1
    try:
        assert ping(parent) == b"pong %d %s\n" % (ev.pid, TENANT.encode())
        p = psutil.Process(ev.pid)
        assert p.ppid() == template.proc.pid
        assert " ".join(p.cmdline()).strip() == f"walredo {TENANT}"  # setproctitle pads
        assert os.getpgid(ev.pid) == ev.pid  # its own process group
        # the child's fds: /dev/null on 0 and 1, inherited stderr, its socket — nothing else
        fds = {int(f): os.readlink(f"/proc/{ev.pid}/fd/{f}") for f in os.listdir(f"/proc/{ev.pid}/fd")}
        assert fds[0] == fds[1] == "/dev/null" and 2 in fds, fds
        others = [t for fd, t in fds.items() if fd > 2]
        assert len(others) == 1 and others[0].startswith("socket:"), fds
        # default signal dispositions: nothing caught or blocked; only Python's SIGPIPE/SIGXFSZ ignored
        status = dict(line.split(":\t", 1) for line in open(f"/proc/{ev.pid}/status").read().splitlines()
                      if ":\t" in line)
        assert int(status["SigCgt"], 16) == 0 and int(status["SigBlk"], 16) == 0, status
        assert int(status["SigIgn"], 16) == (1 << (signal.SIGPIPE - 1)) | (1 << (signal.SIGXFSZ - 1))
        signal.pidfd_send_signal(ev.pidfd, signal.SIGKILL)
        exited = c.next(control.Exited)
        assert exited == control.Exited(ev.pid, -signal.SIGKILL)
        with pytest.raises(psutil.NoSuchProcess):
            psutil.Process(ev.pid).status()  # reaped by the template: no zombie
    finally:
        os.close(ev.pidfd)
        parent.close()
        c.close()


def test_child_exits_on_eof_with_status(template):
    c = RawClient(template.path, template.key)
    parent = c.spawn(1)
    ev = c.next(control.Spawned)
    os.close(ev.pidfd)
    parent.close()
    assert c.next(control.Exited) == control.Exited(ev.pid, 0)
    parent = c.spawn(2)
    ev = c.next(control.Spawned)
    os.close(ev.pidfd)
    parent.sendall(b"exit 7\n")
    assert c.next(control.Exited) == control.Exited(ev.pid, 7)
    parent.close()
    c.close()


def test_invalid_tenant_refused_typed(template):
    c = RawClient(template.path, template.key)
    before = template.num_fds()
    parent = c.spawn(3, tenant="NOT-A-TENANT")
    err = c.next(control.ErrorReply)
    assert err.request_id == 3 and err.code == "invalid-tenant"
    parent.settimeout(10)
    assert parent.recv(1) == b""  # the template closed the child end it was given
    parent.close()
    c.send(control.StatsRequest(4))
    assert c.next(control.StatsReply).stats["spawns"] == 0
    assert template.num_fds() == before
    c.close()


def test_bad_input_never_crashes_or_leaks(template):
    good = RawClient(template.path, template.key)
    good.send(control.StatsRequest(1))
    good.next(control.StatsReply)
    baseline = template.num_fds()

    def authed():
        return RawClient(template.path, template.key)

    # garbage before authentication: dropped
    s = socket.socket(socket.AF_UNIX)
    s.connect(template.path)
    s.sendall(os.urandom(1000))
    s.settimeout(10)
    while s.recv(4096):
        pass
    s.close()
    # truncated frame then EOF, with an fd riding on it
    c = authed()
    fd = os.open(os.devnull, os.O_RDONLY)
    frame, _ = control.encode(control.Spawn(9, TENANT, {}, fd))
    fdpass.send(c.sock, frame[:-3], [fd])
    os.close(fd)
    c.close()
    # oversized frame: typed error, then closed
    c = authed()
    c.sock.sendall((control.MAX_FRAME + 1).to_bytes(4, "big") + b"x" * 100)
    assert c.next(control.ErrorReply).code == "frame-too-large"
    with pytest.raises(EOFError):
        c.next()
    c.close()
    # garbage body, wrong types, fd-less spawn, extra fds: typed errors, the connection keeps working
    c = authed()
    c.sock.sendall(b"\0\0\0\3abc")
    assert c.next(control.ErrorReply).code == "bad-request"
    body = b'\x84\xa1t\xa5spawn\xa2id\x05\xa6tenant\x01\xa7options\x80'
    c.sock.sendall(len(body).to_bytes(4, "big") + body)
    assert c.next(control.ErrorReply).code == "bad-request"
    frame, _ = control.encode(control.Spawn(6, TENANT, {}, 0))
    c.sock.sendall(frame)  # no fd attached
    err = c.next(control.ErrorReply)
    assert (err.request_id, err.code) == (6, "missing-fd")
    fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(2)]
    frame, _ = control.encode(control.Spawn(7, TENANT, {}, fds[0]))
    fdpass.send(c.sock, frame, fds)
    fdpass.close_fds(fds)
    assert c.next(control.ErrorReply).code == "extra-fds"
    parent, child = socket.socketpair()
    c.send(control.Spawn(8, TENANT, {"bad": [1, 2]}, child.fileno()))
    child.close()
    assert c.next(control.ErrorReply).code == "invalid-options"
    parent.close()
    c.send(control.StatsRequest(10))
    assert c.next(control.StatsReply).stats["spawns"] == 0
    c.close()
    # the template is fine, serves the good client, and holds no more fds than before
    good.send(control.StatsRequest(2))
    stats = good.next(control.StatsReply).stats
    assert stats["connections"] == 1 and stats["live"] == 0
    assert template.num_fds() == baseline
    good.close()


def test_peer_without_key_is_refused_and_template_keeps_serving(template):
    with pytest.raises(ControlProtocolError) as e:
        RawClient(template.path, bytes(32))
    assert e.value.code == "auth-failed"
    c = RawClient(template.path, template.key)
    parent = c.spawn(1)
    ev = c.next(control.Spawned)
    assert ping(parent).startswith(b"pong")
    os.close(ev.pidfd)
    parent.close()
    c.next(control.Exited)
    c.close()


_OTHER_UID_PEER = textwrap.dedent("""
    import ctypes, os, socket, sys
    path, mode = sys.argv[1], sys.argv[2]
    libc = ctypes.CDLL(None, use_errno=True)
    if mode == "euid":
        # Effective uid nobody (what SO_PEERCRED reports) but file-system uid 0, so that the 0700/0600
        # permissions let us reach the socket and the template's own uid check is what must refuse us.
        os.setegid(65534); os.seteuid(65534); libc.setfsuid(0)
    else:
        os.setgid(65534); os.setuid(65534)
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    try:
        s.connect(path)
    except PermissionError:
        print("permission-denied"); sys.exit(0)
    try:
        s.sendall(b"\\0\\0\\0\\1\\xc0")
        data = s.recv(100)
    except (BrokenPipeError, ConnectionResetError):
        data = b""
    print("eof" if data == b"" else "got-data")
""")


@pytest.mark.skipif(os.getuid() != 0, reason="dropping to another uid needs root")
def test_other_uid_peer_is_refused(template):
    for mode, expected in (("euid", "eof"), ("full", "permission-denied")):
        out = subprocess.run([sys.executable, "-c", _OTHER_UID_PEER, template.path, mode],
                             capture_output=True, timeout=30)
        assert out.stdout.decode().strip() == expected, (mode, out)
    c = RawClient(template.path, template.key)
    c.send(control.StatsRequest(1))
    assert c.next(control.StatsReply).stats["connections"] == 1
    c.close()


def test_sigterm_leaves_children_serving(template):
    c = RawClient(template.path, template.key)
    parent = c.spawn(1)
    ev = c.next(control.Spawned)
    template.proc.send_signal(signal.SIGTERM)
    assert template.proc.wait(timeout=10) == 0
    assert ping(parent).startswith(b"pong %d" % ev.pid)
    parent.close()  # the orphan exits on EOF; proc_guard (subreaper) reaps it
    os.close(ev.pidfd)
    c.close()


def test_second_template_on_a_live_socket_refuses(template):
    out = subprocess.run([os.path.join(REPO, "scripts", "walredo-template"), "--socket", template.path,
                          "--worker", WORKER], capture_output=True, timeout=60, cwd=REPO)
    assert out.returncode == 3 and b"already listening" in out.stderr


def test_unimportable_worker_fails_fast(tmp_path):
    out = subprocess.run([os.path.join(REPO, "scripts", "walredo-template"), "--socket",
                          str(tmp_path / "d" / "s"), "--worker", "no_such_module_xyz:main"],
                         capture_output=True, timeout=60, cwd=REPO)
    assert out.returncode == 2 and b"cannot load worker" in out.stderr


def test_unsafe_socket_dir_refused(tmp_path):
    d = tmp_path / "open"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    out = subprocess.run([os.path.join(REPO, "scripts", "walredo-template"), "--socket", str(d / "s"),
                          "--worker", WORKER], capture_output=True, timeout=60, cwd=REPO)
    assert out.returncode == 3 and b"0700" in out.stderr


def _stats_when(c, pred, rid):
    """Poll the template's stats until ``pred(stats)`` (the pool refills after the reply went out)."""
    deadline = time.monotonic() + 10
    while True:
        c.send(control.StatsRequest(rid))
        stats = c.next(control.StatsReply).stats
        if pred(stats) or time.monotonic() > deadline:
            return stats
        time.sleep(0.01)


def _fds_of(pid) -> dict[int, str]:
    return {int(f): os.readlink(f"/proc/{pid}/fd/{f}") for f in os.listdir(f"/proc/{pid}/fd")}


def _idle_and_waiting(proc) -> bool:
    return " ".join(proc.cmdline()).strip() == "walredo (idle)"  # titled once its hygiene is done


def test_spawn_is_served_by_a_pre_forked_child_and_the_pool_refills(template):
    c = RawClient(template.path, template.key)
    stats = _stats_when(c, lambda s: s["idle"] == 1, 100)
    assert stats["idle"] == 1 and stats["live"] == 0
    (idle,) = psutil.Process(template.proc.pid).children()
    deadline = time.monotonic() + 10
    while not _idle_and_waiting(idle) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _idle_and_waiting(idle)
    # waiting for a tenant: /dev/null on 0 and 1, stderr, its assignment channel — nothing else
    fds = _fds_of(idle.pid)
    assert fds[0] == fds[1] == "/dev/null" and 2 in fds and len(fds) == 4, fds
    parent = c.spawn(1)
    ev = c.next(control.Spawned)
    try:
        assert ev.pid == idle.pid
        assert ping(parent) == b"pong %d %s\n" % (ev.pid, TENANT.encode())
        assert " ".join(idle.cmdline()).strip() == f"walredo {TENANT}"
        others = [t for fd, t in _fds_of(ev.pid).items() if fd > 2]
        assert len(others) == 1 and others[0].startswith("socket:")  # the channel is gone
        stats = _stats_when(c, lambda s: s["idle"] == 1, 101)
        assert (stats["idle"], stats["live"], stats["spawns"]) == (1, 1, 1)
        assert {p.pid for p in psutil.Process(template.proc.pid).children()} - {ev.pid}  # a new pool child
        parent.close()
        assert c.next(control.Exited) == control.Exited(ev.pid, 0)
    finally:
        os.close(ev.pidfd)
        parent.close()
        c.close()


def test_pool_child_that_dies_is_replaced_silently(template):
    c = RawClient(template.path, template.key)
    _stats_when(c, lambda s: s["idle"] == 1, 100)
    (idle,) = psutil.Process(template.proc.pid).children()
    idle.kill()
    idle.wait(timeout=10)  # gone, and not a zombie: the template reaped it
    stats = _stats_when(c, lambda s: s["idle"] == 1, 101)
    assert (stats["idle"], stats["live"], stats["spawns"]) == (1, 0, 0)
    (replacement,) = psutil.Process(template.proc.pid).children()
    assert replacement.pid != idle.pid
    parent = c.spawn(1)
    ev = c.next(control.Spawned)
    assert ev.pid == replacement.pid and ping(parent).startswith(b"pong")
    os.close(ev.pidfd)
    parent.close()
    assert c.next(control.Exited) == control.Exited(ev.pid, 0)
    assert not any(isinstance(e, control.Exited) for e in c.events)  # no event for the idle one
    c.close()


@pytest.fixture
def template_without_pool(monkeypatch, request):
    monkeypatch.setenv("WALREDO_TEMPLATE_POOL", "0")
    return request.getfixturevalue("template")


def test_pool_size_zero_forks_on_request(template_without_pool):
    template = template_without_pool
    c = RawClient(template.path, template.key)
    c.send(control.StatsRequest(100))
    assert c.next(control.StatsReply).stats["idle"] == 0
    assert psutil.Process(template.proc.pid).children() == []
    parent = c.spawn(1)
    ev = c.next(control.Spawned)
    assert ping(parent) == b"pong %d %s\n" % (ev.pid, TENANT.encode())
    os.close(ev.pidfd)
    parent.close()
    assert c.next(control.Exited) == control.Exited(ev.pid, 0)
    c.close()


def test_replies_queued_behind_a_full_socket_arrive_in_order_with_their_fds(template):
    # A peer that does not read for a while: the template's socket buffer fills, later replies (spawned ones
    # with their pidfd among them) wait in its queue and go out, in order, once the peer reads again.
    c = RawClient(template.path, template.key)
    spawn_ids = {500, 2500, 4500}
    parents = {}
    for i in range(6000):
        if i in spawn_ids:
            parents[i] = c.spawn(i)
        else:
            c.send(control.StatsRequest(i))
    pids = []
    try:
        for i in range(6000):
            ev = c.next()
            if isinstance(ev, control.Exited):  # cannot happen before we close a child; fail clearly
                raise AssertionError(ev)
            assert ev.request_id == i, (i, ev)
            if i in spawn_ids:
                assert isinstance(ev, control.Spawned)
                os.fstat(ev.pidfd)  # a real fd arrived with the queued frame
                os.close(ev.pidfd)
                pids.append(ev.pid)
                assert ping(parents[i]) == b"pong %d %s\n" % (ev.pid, TENANT.encode())
            else:
                assert isinstance(ev, control.StatsReply)
    finally:
        for p in parents.values():
            p.close()
    exited = {c.next(control.Exited).pid for _ in pids}
    assert exited == set(pids)
    c.close()


def _pool_full(stats) -> bool:
    return stats["idle"] == stats["pool_size"]


def _spawn_with_fd(c, rid, fd):
    c.send(control.Spawn(rid, TENANT, {}, fd))


@pytest.mark.parametrize("kind", ["udp", "datagram-peer-closed", "seqpacket", "listening", "pipe"])
def test_spawn_fd_that_is_not_a_connected_stream_socket_is_refused_before_any_fork(template, kind):
    # A worker given one of these would block forever (no EOF ever comes) and survive SIGTERM.
    c = RawClient(template.path, template.key)
    _stats_when(c, _pool_full, 100)
    children_before = {p.pid for p in psutil.Process(template.proc.pid).children()}
    fds_before = template.num_fds()
    keep = []
    if kind == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        fd = s.fileno()
        keep.append(s)
    elif kind == "datagram-peer-closed":
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        a.close()
        fd = b.fileno()
        keep.append(b)
    elif kind == "seqpacket":
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        fd = b.fileno()
        keep += [a, b]
    elif kind == "listening":
        s = socket.socket(socket.AF_UNIX)
        s.bind(f"\0walredo-test-listening-{os.getpid()}")
        s.listen()
        fd = s.fileno()
        keep.append(s)
    else:
        r, w = os.pipe()
        fd = r
    try:
        _spawn_with_fd(c, 7, fd)
        err = c.next(control.ErrorReply)
        assert (err.request_id, err.code) == (7, "bad-fds"), err
        assert "connected AF_UNIX SOCK_STREAM" in err.message
        # no fork, no pool child used, nothing held; the connection still serves
        stats = _stats_when(c, _pool_full, 101)
        assert (stats["spawns"], stats["live"], stats["pool_hits"], stats["pool_misses"]) == (0, 0, 0, 0)
        assert {p.pid for p in psutil.Process(template.proc.pid).children()} == children_before
        assert template.num_fds() == fds_before
        parent = c.spawn(8)
        ev = c.next(control.Spawned)
        assert ping(parent).startswith(b"pong %d" % ev.pid)
        os.close(ev.pidfd)
        parent.close()
        assert c.next(control.Exited) == control.Exited(ev.pid, 0)
    finally:
        for s in keep:
            s.close()
        if kind == "pipe":
            os.close(r)
            os.close(w)
        c.close()


def test_listen_backlog_matches_the_connection_cap(template):
    # With the template stopped, every connect lands in the listen queue: all 1024 must fit (a backlog of
    # 128 refuses the 130th with EAGAIN). Then the template accepts and serves them.
    import resource

    from forkserver import template as template_module

    cap = template_module._MAX_CONNECTIONS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < cap + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, cap + 200), hard))
    socks = []
    os.kill(template.proc.pid, signal.SIGSTOP)
    try:
        for _ in range(cap):
            s = socket.socket(socket.AF_UNIX)
            s.setblocking(False)
            socks.append(s)
            s.connect(template.path)  # BlockingIOError here: the queue is full
    finally:
        os.kill(template.proc.pid, signal.SIGCONT)
        for s in socks:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert len(socks) == cap
    c = RawClient(template.path, template.key)
    stats = _stats_when(c, lambda s: s["connections"] == 1, 1)
    assert stats["connections"] == 1
    c.close()


def test_stats_list_the_live_children_and_count_pool_hits_and_misses(template):
    c = RawClient(template.path, template.key)
    pool_size = _stats_when(c, _pool_full, 100)["pool_size"]
    tenants = [f"{i:032x}" for i in range(1, 4)]
    before = time.time()
    parents = [c.spawn(i, t) for i, t in enumerate(tenants)]  # one batch: the first is a pool hit
    evs = [c.next(control.Spawned) for _ in tenants]
    try:
        stats = _stats_when(c, _pool_full, 101)
        assert stats["spawns"] == 3 and stats["live"] == 3
        assert stats["pool_hits"] >= 1 and stats["pool_hits"] + stats["pool_misses"] == 3
        assert stats["pool_refills"] >= pool_size + stats["pool_hits"] and stats["fork_failures"] == 0
        assert stats["started"] <= before
        listed = stats["children"]
        assert [(t, pid) for t, pid, _ in listed] == [(t, ev.pid) for t, ev in zip(tenants, evs)]
        assert all(before <= started <= time.time() for _, _, started in listed)
        assert stats["children_omitted"] == 0
    finally:
        for p in parents:
            p.close()
    exited = {c.next(control.Exited).pid for _ in tenants}
    assert exited == {ev.pid for ev in evs}
    stats = _stats_when(c, lambda s: not s["children"], 102)
    assert stats["children"] == [] and stats["live"] == 0
    for ev in evs:
        os.close(ev.pidfd)
    c.close()
