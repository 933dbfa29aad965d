"""The walredo child policy: what a process that parses tenant-controlled WAL may still do.

Runs in the child (the template only compiles the filter, once). :func:`enter` puts the calling process
into the policy, in this order (each step says why it comes where it does):

1. optionally a different user (:func:`lookup_user`, root only): ``setgroups([])``, ``setgid``, ``setuid``
   (real, effective and saved ids; a root process that becomes another uid loses every capability). First,
   because it needs syscalls the filter forbids, and because ``setuid`` resets the dumpable flag;
2. ``PR_SET_NO_NEW_PRIVS``: nothing this process runs can gain privileges (set-uid binaries, file
   capabilities); also what lets an unprivileged process install a seccomp filter;
3. ``PR_SET_DUMPABLE 0``: no same-uid ``ptrace`` and no ``/proc/<pid>/mem`` of this process by its siblings
   (and no core dump);
4. resource limits, soft = hard so they cannot be raised again: ``RLIMIT_CORE 0``; ``RLIMIT_NOFILE`` just
   above the fds the process holds (one spare: a pool child still receives its socket); ``RLIMIT_NPROC 0``
   (the filter refuses fork anyway; this also holds for a non-root uid if the filter were ever bypassed);
   ``RLIMIT_AS`` = ``memory_limit`` (default :data:`DEFAULT_MEMORY_LIMIT`, 256 MiB; see below);
5. a seccomp-bpf allowlist (:data:`ALLOWED_SYSCALLS`); any other syscall, and any syscall made through
   another ABI (the program checks the architecture first, and refuses x32 numbers on x86-64), ends the
   process with ``SECCOMP_RET_KILL_PROCESS``: the parent sees it killed by SIGSYS (``wait()`` gives -31).

The allowlist is what the walredo worker needs once it is ready, measured with ``strace -f`` on a template
whose children served real requests (heap redo from ``tests/data/wal-small`` through ``WalRedoManager``,
lz4/zstd/uncompressed full-page images, mutated records, malformed frames, redo-engine refusals, oversized
frames, EOF), pool children and children forked on request alike:

=================  ===================================================================================
syscall            why the child needs it (14)
=================  ===================================================================================
recvfrom           ``sock.recv_into``: reading requests from its socket
sendto             ``sock.sendall``: writing responses
recvmsg            a pool child receives its tenant and socket (SCM_RIGHTS) after entering the policy
getsockname        ``socket.socket(fileno=fd)`` checks that the fd it wraps is a socket (CPython 3.11),
                   for the socket a pool child received; it names only the child's own socket
close              the pool channel after the assignment; the socket at EOF
write              stderr: log lines and tracebacks (fd 2 is the only writable fd besides the socket)
brk                glibc malloc (main arena)
mmap, munmap       pymalloc arenas, large malloc blocks, the worker's receive buffer
mremap             realloc of a large block (a growing receive buffer, a big bytearray)
getpid             ``logging`` stamps every record with the pid
clock_gettime      ``time.perf_counter``/``time.time`` (the vDSO answers without a syscall on most
                   clock sources; the syscall is its fallback)
prctl              only ``PR_SET_NAME`` (argument checked): ``setproctitle`` names a pool child for its
                   tenant after the assignment
exit_group         ``os._exit``: the only way out
=================  ===================================================================================

Everything else is refused, in particular ``open``/``openat`` (no file, no ``/proc/<pid>/mem``), ``stat``,
``socket``/``connect`` (no network, no control socket), ``execve``, ``fork``/``clone``/``vfork``,
``ptrace``, ``kill``/``tgkill`` (no signal to any pid), ``prlimit64``/``setrlimit``, ``mprotect`` and
``seccomp`` itself. Neon's ``pgxn/neon_walredo/seccomp.c`` allows a similar handful (read, write, brk,
futex, exit_group, getpid, select, mmap/munmap); Python needs no ``select`` (blocking socket, no timeout)
and no ``futex`` (one thread: glibc locks never contend).

Python in the sandbox: after :func:`enter` the process cannot read a file, so (a) importing a module that is
not imported yet ends it — import everything first (the walredo worker imports its optional compression
modules at import time, so the template preloads them); (b) tracebacks leave out source lines:
:func:`enter` tells ``linecache`` not to look for files.

Memory: ``RLIMIT_AS`` bounds everything the process maps (heap, anonymous and shared mmaps alike), so a
request cannot make a child grow until the host's OOM killer picks a victim: an allocation past the limit
fails (``MemoryError``) instead. The walredo worker then exits with :data:`EXIT_MEMORY_LIMIT`, and refuses,
before allocating, a frame that announces more than :func:`request_budget` allows. 256 MiB: a forked walredo
child maps about 32 MiB (the interpreter, the preloaded engine, glibc and the native extensions), decoding
and redoing a request takes up to ~3x its size on top (measured: 2.1x for 8 MiB, 3.0x for 32 MiB), so 256
MiB serves a request of up to ~54 MiB — far above any real page's chain of records (Neon's walredo
processes run at ~22 MiB RSS) — while one bad request can cost the host at most 256 MiB, not its OOM killer.

Cost: the template compiles the filter once (libseccomp, ~10 ms at start-up); :func:`enter` in a freshly
forked child then takes ~0.14 ms (four prctl/setrlimit steps and loading the 25-instruction program). A
pool child pays it in its idle phase, after ``prepare()``, off the spawn's path; it is on the path only
when spawns come back to back (the pool child is still idling when the next request arrives) or for a
child forked on request because the pool is empty. Each allowed syscall then costs a filter run of a few
instructions.

Self-test: ``tests/test_sandbox.py`` runs a worker that enters the policy and then tries open, socket,
execve, fork, ptrace, kill and reading the template's memory; each attempt must end it with SIGSYS.

A custom worker (``walredo-template --worker MOD:FUNC``) is sandboxed by the template before it runs (unless
``--no-sandbox``); a worker started some other way can call ``forkserver.sandbox.enter()`` itself, once
everything it needs is imported and every fd it needs is open. :func:`enter` compiles the filter on first
use (:func:`prepare` does it ahead of time; the template calls it once so a child only loads it).

Errors: :class:`SandboxError` (an ``OSError``) when a step fails — the process is then partly confined and
must not serve (the template's child exits with status 70).
"""

from __future__ import annotations

import ctypes
import errno
import linecache
import os
import pwd
import resource
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ALLOWED_SYSCALLS", "DEFAULT_MEMORY_LIMIT", "EXIT_MEMORY_LIMIT", "ChildUser", "Entered", "Policy",
    "SandboxError", "become", "current", "enter", "lookup_user", "mapped_bytes", "prepare", "request_budget",
]

#: ``RLIMIT_AS`` of a sandboxed walredo child unless configured otherwise (module docstring says why).
DEFAULT_MEMORY_LIMIT = 256 << 20

#: Exit status of a walredo worker that ran into its memory limit (``MemoryError``); the manager counts it
#: as ``memory_limit``.
EXIT_MEMORY_LIMIT = 87

#: Syscalls a sandboxed child may make (module docstring: why each). ``prctl`` only with ``PR_SET_NAME``.
ALLOWED_SYSCALLS = (
    "recvfrom", "sendto", "recvmsg", "getsockname", "close", "write", "brk", "mmap", "munmap", "mremap",
    "getpid", "clock_gettime", "prctl", "exit_group",
)

# How much address space a request of n bytes may take while it is decoded and redone: the receive buffer's
# copy in the decoder, msgpack's copy of the records, the engine's working copies. Measured peak 2.1-3.0x.
_REQUEST_MEMORY_FACTOR = 4
# Kept free for everything else (the page, the response, the interpreter's own allocations).
_REQUEST_MEMORY_RESERVE = 16 << 20

_PR_SET_DUMPABLE = 4
_PR_SET_NAME = 15
_PR_SET_SECCOMP = 22
_PR_SET_NO_NEW_PRIVS = 38
_SECCOMP_MODE_FILTER = 2

# libseccomp (Debian: libseccomp2, on every system apt runs on).
_SCMP_ACT_KILL_PROCESS = 0x80000000
_SCMP_ACT_ALLOW = 0x7FFF0000
_SCMP_FLTATR_ACT_BADARCH = 2
_SCMP_CMP_MASKED_EQ = 7


class SandboxError(OSError):
    """A step of :func:`enter` (or compiling the filter) failed; the process must not serve."""


@dataclass(frozen=True)
class ChildUser:
    """The user a child drops to (:func:`lookup_user`)."""

    name: str
    uid: int
    gid: int


@dataclass(frozen=True)
class Policy:
    """What the template applies to each child it forks (``Template(policy=...)``): enter the sandbox with
    ``memory_limit`` (``seccomp`` True, the default) and/or drop to ``user`` first."""

    seccomp: bool = True
    memory_limit: int | None = DEFAULT_MEMORY_LIMIT
    user: ChildUser | None = None
    # What the template maps (bytes) when it starts forking: a fresh fork maps the same, so a child need
    # not read /proc/self/statm on its way into the sandbox (set by the template).
    mapped_hint: int | None = None


@dataclass(frozen=True)
class Entered:
    """What :func:`enter` set up (:func:`current` returns it)."""

    memory_limit: int | None  # RLIMIT_AS, bytes; None: not limited
    mapped_at_entry: int  # bytes the process mapped (VmSize) when it entered
    nofile: int  # RLIMIT_NOFILE
    user: ChildUser | None


class _ScmpArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_libc = ctypes.CDLL(None, use_errno=True)
# Resolved (and its argument conversion set up) at import, in the template: a child forked on request then
# skips dlsym and the function object's construction on its spawn path.
_libc_prctl = _libc.prctl
_libc_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc_prctl.restype = ctypes.c_int
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
# The BPF program and the struct that points at it.
_compiled: tuple[ctypes.Array[ctypes.c_char], _SockFprog] | None = None
_entered: Entered | None = None


def lookup_user(name: str) -> ChildUser:
    """Resolve ``name`` (or a numeric uid) to its uid and primary group. Errors: ``KeyError`` if unknown."""
    try:
        pw = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except KeyError:
        raise KeyError(f"no such user: {name!r}") from None
    return ChildUser(pw.pw_name, pw.pw_uid, pw.pw_gid)


def prepare() -> None:
    """Compile the filter now (libseccomp → BPF), so that :func:`enter` only loads it, and make ``linecache``
    look for no file once the process is sandboxed. The template calls this once before it forks; children
    inherit both. Errors: :class:`SandboxError`."""
    global _compiled
    if _compiled is None:
        program = _compile(ALLOWED_SYSCALLS)
        buf = ctypes.create_string_buffer(program, len(program))
        _compiled = (buf, _SockFprog(len(program) // 8, ctypes.addressof(buf)))
        linecache.checkcache = _sandboxed_checkcache
        linecache.updatecache = _sandboxed_updatecache


def current() -> Entered | None:
    """What :func:`enter` set up in this process, or ``None`` if it was not called."""
    return _entered


def request_budget() -> int | None:
    """The largest request frame (bytes) this process can decode and redo within its memory limit, or
    ``None`` when it has no limit."""
    e = _entered
    if e is None or e.memory_limit is None:
        return None
    free = e.memory_limit - e.mapped_at_entry - _REQUEST_MEMORY_RESERVE
    return max(0, free // _REQUEST_MEMORY_FACTOR)


def enter(*, memory_limit: int | None = DEFAULT_MEMORY_LIMIT, nofile: int | None = None,
          user: ChildUser | None = None, mapped: int | None = None) -> Entered:
    """Put the calling process into the walredo child policy (module docstring: the steps, in order).
    Irreversible; call it once, single-threaded, after everything the process needs is imported and open.

    ``memory_limit``: ``RLIMIT_AS`` in bytes (``None``: unlimited); ``nofile``: ``RLIMIT_NOFILE`` (default:
    the number of fds open now + 1); ``user``: drop to this user first (needs root); ``mapped``: what the
    process maps now, if the caller knows (default: read from ``/proc/self/statm``).

    Errors: :class:`SandboxError` if a step fails (e.g. ``memory_limit`` below what the process already maps,
    no seccomp in the kernel, not root with ``user``); ``RuntimeError`` if called twice.
    """
    global _entered
    if _entered is not None:
        raise RuntimeError("the sandbox was entered already")
    prepare()
    assert _compiled is not None
    # Read before the filter forbids it: what the process holds now sizes the limits.
    if mapped is None:
        mapped = mapped_bytes()
    if memory_limit is not None and memory_limit <= mapped:
        raise SandboxError(errno.ENOMEM, f"memory limit {memory_limit} is below the {mapped} bytes the "
                                         "process maps already")
    if nofile is None:
        nofile = len(_open_fds()) + 1
    if user is not None:
        become(user)
    _prctl(_PR_SET_NO_NEW_PRIVS, 1, what="PR_SET_NO_NEW_PRIVS")
    _prctl(_PR_SET_DUMPABLE, 0, what="PR_SET_DUMPABLE")
    limits = [(resource.RLIMIT_CORE, 0), (resource.RLIMIT_NOFILE, nofile), (resource.RLIMIT_NPROC, 0)]
    if memory_limit is not None:
        limits.append((resource.RLIMIT_AS, memory_limit))
    for res, value in limits:
        try:
            resource.setrlimit(res, (value, value))
        except (OSError, ValueError) as e:
            raise SandboxError(errno.EPERM, f"setrlimit({res}, {value}): {e}") from None
    _prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(_compiled[1]), what="PR_SET_SECCOMP")
    _entered = Entered(memory_limit, mapped, nofile, user)
    return _entered


def become(user: ChildUser) -> None:
    """Drop to ``user`` for good: no supplementary groups, then its group, then its uid (real, effective and
    saved; a root process loses its capabilities with it). Errors: :class:`SandboxError` (e.g. not root)."""
    try:
        os.setgroups([])
        os.setgid(user.gid)
        os.setuid(user.uid)
    except OSError as e:
        raise SandboxError(e.errno, f"cannot become user {user.name}: {e.strerror}") from None


# Tracebacks must not look for source files in the sandbox: the stat/openat would end the process. The
# wrappers are installed by prepare() (in the template, once) and only change what they do once `_entered`
# is set: the child's way into the sandbox writes no page of linecache (a copy-on-write fault each).
_checkcache, _updatecache = linecache.checkcache, linecache.updatecache


def _sandboxed_checkcache(filename: str | None = None) -> None:
    if _entered is None:
        _checkcache(filename)


def _sandboxed_updatecache(filename: str, module_globals: dict[str, Any] | None = None) -> list[str]:
    if _entered is None:
        return _updatecache(filename, module_globals)
    return []



def _prctl(option: int, arg: int, arg3: int = 0, *, what: str) -> None:
    if _libc_prctl(option, arg, arg3, 0, 0) != 0:
        err = ctypes.get_errno()
        raise SandboxError(err, f"prctl({what}): {os.strerror(err)}")


def _open_fds() -> list[int]:
    # The listing's own directory fd shows up in it and is closed by the time we look: keep what is open.
    out = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            os.fstat(fd)
        except OSError:
            continue
        out.append(fd)
    return out


def mapped_bytes() -> int:
    """What this process maps now (VmSize, bytes)."""
    # os.open/os.read, not open(): no io objects to build (each is copy-on-write faults in a fresh fork).
    fd = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
    try:
        first = os.read(fd, 64).split(b" ", 1)[0]
    finally:
        os.close(fd)
    return int(first) * _PAGE_SIZE


def _compile(names: tuple[str, ...]) -> bytes:
    """The allowlist as a BPF program, built by libseccomp for the native architecture (it checks
    ``seccomp_data.arch`` first; a foreign ABI is killed too)."""
    try:
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError as e:
        raise SandboxError(errno.ENOENT, f"libseccomp is not installed (Debian: libseccomp2): {e}") from None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.c_void_p]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    ctx = lib.seccomp_init(_SCMP_ACT_KILL_PROCESS)
    if not ctx:
        raise SandboxError(errno.EINVAL, "seccomp_init failed")
    try:
        def check(rc: int, what: str) -> None:
            if rc < 0:
                raise SandboxError(-rc, f"libseccomp {what}: {os.strerror(-rc)}")

        check(lib.seccomp_attr_set(ctx, _SCMP_FLTATR_ACT_BADARCH, _SCMP_ACT_KILL_PROCESS), "attr ACT_BADARCH")
        for name in names:
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr < 0:
                raise SandboxError(errno.ENOSYS, f"libseccomp does not know syscall {name!r}")
            if name == "prctl":
                # prctl's option is a C int: compare its low 32 bits only (the upper half of the register
                # is not defined by the ABI).
                cmp = (_ScmpArgCmp * 1)(_ScmpArgCmp(0, _SCMP_CMP_MASKED_EQ, 0xFFFFFFFF, _PR_SET_NAME))
                check(lib.seccomp_rule_add_array(ctx, _SCMP_ACT_ALLOW, nr, 1, cmp), f"rule {name}")
            else:
                check(lib.seccomp_rule_add_array(ctx, _SCMP_ACT_ALLOW, nr, 0, None), f"rule {name}")
        r, w = os.pipe()
        try:
            check(lib.seccomp_export_bpf(ctx, w), "export_bpf")
            os.close(w)
            w = -1
            chunks = []
            while chunk := os.read(r, 65536):
                chunks.append(chunk)
        finally:
            os.close(r)
            if w >= 0:
                os.close(w)
        program = b"".join(chunks)
    finally:
        lib.seccomp_release(ctx)
    if not program or len(program) % 8:
        raise SandboxError(errno.EINVAL, f"libseccomp exported a {len(program)}-byte program")
    return program

