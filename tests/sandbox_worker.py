"""Workers for tests/test_sandbox.py: a stand-in for a subverted walredo child, and two walredo workers that
misbehave on one LSN.

``main(sock, tenant)`` speaks a line protocol (one reply line per command, none when the attempt kills it):

    b"scan <hex>\\n"     -> b"hits <n> <where>\\n": copies of the 32-byte key whose bytes XOR 0xff are <hex>
                          in this process's writable memory (read through /proc/self/mem)
    b"plant <hex>\\n"    -> b"planted\\n": keep a copy of that key in an ordinary bytes object (the
                          scanner's positive control)
    b"enter\\n"          -> b"entered\\n": forkserver.sandbox.enter(), as a custom worker would
    b"try <what> [arg]\\n" -> b"survived ...\\n" if the attempt did not end the process (see ATTEMPTS;
                          ``traceback`` is one that must survive)
    b"ping\\n"           -> b"pong <pid>\\n"

The key arrives XOR 0xff and is rebuilt byte by byte in a private page the scan skips, so that the scanner
itself holds no copy anywhere else.

``prepared``: :func:`main` with a ``prepare()`` that reads a file (it must run before the sandbox).
``walredo_open_on_lsn`` / ``walredo_hungry_on_lsn``: the real walredo worker, except that a redo at
:data:`EVIL_LSN` opens /etc/passwd (a sandbox violation) or allocates without bound (the memory limit).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import socket

from forkserver import sandbox
from walredo_template import protocol, worker

EVIL_LSN = 0xDEAD0000
_CHUNK = 1 << 20
_planted: list[bytes] = []


def _open():
    os.open("/etc/passwd", os.O_RDONLY)


def _socket():
    socket.socket(socket.AF_INET, socket.SOCK_STREAM)


def _execve():
    os.execv("/bin/true", ["/bin/true"])


def _fork():
    pid = os.fork()
    if pid == 0:
        os._exit(0)


def _ptrace():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace(ctypes.c_long(16), ctypes.c_long(os.getppid()), None, None)  # PTRACE_ATTACH the template


def _dumpable():
    # prctl is allowed for PR_SET_NAME only: becoming dumpable (ptrace-able by siblings) again is not.
    ctypes.CDLL(None, use_errno=True).prctl(4, 1, 0, 0, 0)


def _kill1():
    os.kill(1, 0)


def _connect(path: str):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)


def _procmem(pid: str):
    with open(f"/proc/{int(pid)}/mem", "rb") as f:
        f.read(1)


def _signal(pid: str):
    os.kill(int(pid), 0)


def _traceback():
    # What the worker does on an engine bug: log.exception. Must survive (linecache looks for no file).
    import logging

    try:
        raise ValueError("an engine bug")
    except ValueError:
        logging.getLogger("tests.sandbox_worker").exception("formatting a traceback in the sandbox")
    raise OSError(0, "logged")


ATTEMPTS = {"traceback": _traceback, "dumpable": _dumpable, "open": _open, "socket": _socket,
            "execve": _execve, "fork": _fork, "ptrace": _ptrace, "kill1": _kill1, "connect": _connect,
            "procmem": _procmem, "signal": _signal}


def _address(mm: mmap.mmap) -> int:
    c = ctypes.c_char.from_buffer(mm)
    try:
        return ctypes.addressof(c)
    finally:
        del c


def scan(xored: bytes) -> tuple[int, list[str]]:
    """Count copies of the key (``xored`` XOR 0xff) in this process's writable mappings."""
    needle_page = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE)
    for i, b in enumerate(xored):
        needle_page[i] = b ^ 0xFF
    n = len(xored)
    needle = memoryview(needle_page)[:n]
    buf = mmap.mmap(-1, _CHUNK, flags=mmap.MAP_PRIVATE)
    skip = [(a, a + mmap.PAGESIZE) for a in (_address(needle_page),)] + [(_address(buf), _address(buf) + _CHUNK)]
    hits, where = 0, []
    with open("/proc/self/maps") as f:
        maps = f.read().splitlines()
    fd = os.open("/proc/self/mem", os.O_RDONLY)
    try:
        for line in maps:
            fields = line.split()
            start, end = (int(x, 16) for x in fields[0].split("-"))
            name = fields[5] if len(fields) > 5 else ""
            if "w" not in fields[1] or name in ("[vvar]", "[vsyscall]"):
                continue
            if any(a < end and start < b for a, b in skip):
                continue
            pos = start
            while pos < end:
                want = min(_CHUNK, end - pos)
                try:
                    got = os.preadv(fd, [memoryview(buf)[:want]], pos)
                except OSError:
                    break
                at = buf.find(needle, 0, got)
                while at >= 0:
                    hits += 1
                    where.append(f"{name or 'anon'}+{pos + at - start:#x}")
                    at = buf.find(needle, at + 1, got)
                if got < want or pos + got >= end:
                    break
                pos += got - (n - 1)  # overlap: a copy across two chunks is still found
    finally:
        os.close(fd)
        needle.release()
    return hits, where


def main(sock: socket.socket, tenant: str) -> None:
    f = sock.makefile("rwb", buffering=0)
    while True:
        line = f.readline()
        if not line:
            return
        cmd, _, arg = line.strip().decode().partition(" ")
        if cmd == "scan":
            hits, where = scan(bytes.fromhex(arg))
            reply = f"hits {hits} {','.join(where[:5])}"
        elif cmd == "plant":
            _planted.append(bytes(b ^ 0xFF for b in bytes.fromhex(arg)))
            reply = "planted"
        elif cmd == "enter":
            sandbox.enter()
            reply = "entered"
        elif cmd == "try":
            what, _, target = arg.partition(" ")
            try:
                ATTEMPTS[what](*([target] if target else []))
            except OSError as e:
                reply = f"survived {e!r}"
            else:
                reply = "survived"
        elif cmd == "prepared?":
            reply = "prepared yes" if _prepared else "prepared no"
        elif cmd == "ping":
            reply = f"pong {os.getpid()}"
        else:
            reply = "unknown"
        sock.sendall(reply.encode() + b"\n")


def _misbehave_on_evil_lsn(action):
    real = worker.handle_request

    def handle(request):
        if isinstance(request, protocol.Redo) and request.lsn == EVIL_LSN:
            action()
        return real(request)

    return handle


def _hog():
    hog = []
    while True:
        hog.append(bytearray(1 << 20))


def walredo_open_on_lsn(sock: socket.socket, tenant: str) -> None:
    worker.handle_request = _misbehave_on_evil_lsn(_open)  # in this child only
    worker.main(sock, tenant)


def walredo_hungry_on_lsn(sock: socket.socket, tenant: str) -> None:
    worker.handle_request = _misbehave_on_evil_lsn(_hog)
    worker.main(sock, tenant)


_prepared: list[bytes] = []


def _prepare() -> None:
    # Opens a file: only possible because the template runs prepare() before the child enters the sandbox.
    with open("/etc/hostname", "rb") as f:
        _prepared.append(f.read())


def prepared(sock: socket.socket, tenant: str) -> None:
    """:func:`main` with a ``prepare()`` that reads a file (the template runs it in a pool child's idle
    phase, before the sandbox)."""
    main(sock, tenant)


prepared.prepare = _prepare  # type: ignore[attr-defined]
