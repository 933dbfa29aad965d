"""How the baselines run the walredo worker, and the raw echo server of the floor measurement.

The same ``walredo_template.worker.main(sock, tenant)`` the template children run is run here by:

- a fresh interpreter: ``python -m benchmarks.baseline_worker worker FD TENANT`` (FD inherited);
- a ``multiprocessing`` forkserver child: :func:`mp_target` (this module is the forkserver's preload);
- a child ``os.fork()``-ed from the benchmark parent: :func:`run_forked_child`.

``python -m benchmarks.baseline_worker echo FD`` runs :func:`echo_serve` instead: a blocking recv/sendall
loop with no decoding, the server half of the raw unix-socket echo floor.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import sys
from typing import NoReturn

# Imported at module top on purpose: the fresh interpreter pays for it (as a real fresh worker would),
# and the multiprocessing forkserver / forking parent have it loaded before they fork.
from walredo_template import worker

RECV_SIZE = 1 << 20


def serve(sock: socket.socket, tenant: str) -> None:
    """Run the walredo worker on ``sock`` until EOF."""
    worker.main(sock, tenant)


def mp_target(sock: socket.socket, tenant: str) -> None:
    """``multiprocessing.Process`` target: the socket arrives pickled (multiprocessing dups its fd)."""
    serve(sock, tenant)


def run_forked_child(sock: socket.socket, tenant: str) -> NoReturn:
    """Body of a child ``os.fork()``-ed from an asyncio parent; never returns.

    Same hygiene as the template's children, so the comparison is like for like: keep only the socket and
    stdio (an inherited copy of another child's parent-end socket would keep that child from seeing EOF),
    drop the parent loop's signal wake-up fd, default signal handlers, leave through ``os._exit``.
    """
    code = 70
    try:
        fd = sock.fileno()
        maxfd = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        os.closerange(3, fd)
        os.closerange(fd + 1, maxfd)
        try:
            signal.set_wakeup_fd(-1)
        except ValueError:
            pass
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        serve(sock, tenant)
        code = 0
    finally:
        os._exit(code)


def echo_serve(sock: socket.socket) -> None:
    """Echo every byte back until EOF: one ``recv`` answered by one ``sendall``, like the worker's loop."""
    sock.setblocking(True)
    try:
        while data := sock.recv(RECV_SIZE):
            sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        sock.close()


def _main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "worker":
        sock = socket.socket(fileno=int(argv[1]))
        serve(sock, argv[2] if len(argv) > 2 else "baseline")
        return 0
    if len(argv) == 2 and argv[0] == "echo":
        echo_serve(socket.socket(fileno=int(argv[1])))
        return 0
    print("usage: python -m benchmarks.baseline_worker (worker FD [TENANT] | echo FD)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
