"""``walredo-template``: run the template in the foreground (systemd style).

    walredo-template --socket PATH [--worker MOD:FUNC] [--pool N] [--key-file PATH]
                     [--log-level LEVEL] [--metrics-port N [--metrics-host HOST]]
                     [--child-memory-limit MIB] [--child-user USER] [--no-sandbox]
    walredo-template status --socket PATH [--key-file PATH] [--json]      (forkserver.template_status)

Preloads the worker, binds ``PATH`` (directory 0700, socket 0600) and prints one readiness line on stdout::

    walredo-template ready pid=<pid> socket=<PATH> key=<KEY FILE> [metrics=<HOST>:<PORT>]

then serves until SIGTERM/SIGINT. The key (32 bytes, as 64 hex digits in a 0600 file; give the file to
``TemplateClient.connect(PATH, key=...)``) is by default a fresh one in ``PATH.key``, removed on exit with the
socket. ``--key-file PATH`` makes it stable: a missing file is created (0600, a fresh key), an existing one
(a regular file we own, no group/other access) is reused, and it is never removed, so clients keep
authenticating across restarts.

``PATH`` itself must be missing or a socket: a live template's is refused (exit 3), a stale one (nobody
answers) is replaced with a warning, and anything else is refused untouched (exit 2). ``--pool`` (default
``$WALREDO_TEMPLATE_POOL``, else :func:`forkserver.template.default_pool_size`) is bounded by
:data:`forkserver.pool.MAX_POOL_SIZE`; a bad value in either is refused naming it (exit 2).

Service mode: logs go to stderr through stdlib logging (``--log-level``, default info; warning under
``--parent-fd``), with timestamps, or as journald priorities when stderr is the journal
(:func:`forkserver.service.setup_logging`). With ``$NOTIFY_SOCKET`` set (a ``Type=notify`` unit) it sends
``READY=1`` once it is bound and serving, and ``STOPPING=1`` when its shutdown begins. ``--metrics-port N``
(off by default; 0 picks a free port, shown in the readiness line) serves the template's counters as
Prometheus text on ``http://HOST:N/metrics`` (``--metrics-host``, default 127.0.0.1). SIGTERM/SIGINT are
held off while the socket and key are set up, so a stop never leaves them behind.

``TemplateClient.launch`` runs the same entry point with ``--parent-fd N`` instead of a key file: it reads the
32 raw key bytes from fd ``N`` and afterwards treats EOF on it as "the launching parent died".

Every child enters the sandbox (:mod:`forkserver.sandbox`) before it serves: ``--child-memory-limit`` sets
its address-space limit (MiB, default 256; 0 = none), ``--child-user USER`` (root only) makes it drop to
that user and group first, ``--no-sandbox`` turns the policy off for debugging (logged on every start).
The key lives in memory the children do not inherit (:mod:`forkserver.secret`).

Exit codes: 0 clean stop, 2 bad arguments / worker import failure, 3 socket, key or metrics set-up failure.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import stat
import sys
from collections.abc import Callable

import setproctitle

from forkserver import sandbox, service
from forkserver.child import DEFAULT_WORKER
from forkserver.pool import MAX_POOL_SIZE
from forkserver.secret import Key
from forkserver.template import POOL_ENV, Template, default_pool_size, pool_size_from_env, prepare_socket_dir

log = logging.getLogger(__name__)

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def load_worker(spec: str) -> Callable[..., object]:
    """Import ``module:function`` and return the function. Errors: ``ValueError`` for a malformed spec,
    ``ImportError`` / ``AttributeError`` when it does not resolve, ``TypeError`` if it is not callable."""
    module, sep, func = spec.partition(":")
    if not sep or not module or not func:
        raise ValueError(f"worker must be MODULE:FUNCTION, got {spec!r}")
    obj: object = importlib.import_module(module)
    for part in func.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{spec} is not callable")
    _check_arity(spec, obj)
    return obj


def _check_arity(spec: str, func: object) -> None:
    """Refuse a plain Python function that cannot be called as ``worker(sock, tenant)`` (found here, at
    start, instead of in every child). From the code object, not ``inspect``: the template stays light."""
    code = getattr(func, "__code__", None)
    if code is None or getattr(func, "__self__", None) is not None:
        return  # a builtin, a bound method or another callable: checked when a child calls it
    positional = code.co_argcount  # positional-only ones included
    defaults = len(getattr(func, "__defaults__", None) or ())
    varargs = bool(code.co_flags & 0x04)  # CO_VARARGS
    kwonly_required = code.co_kwonlyargcount - len(getattr(func, "__kwdefaults__", None) or {})
    if kwonly_required > 0 or (positional < 2 and not varargs) or positional - defaults > 2:
        raise TypeError(f"{spec} must take (sock, tenant): its signature does not accept two positional "
                        "arguments")


def _write_key_file(path: str, key: Key) -> None:
    try:
        os.unlink(path)  # a stale key from a template that died; bind() already proved none is live
    except FileNotFoundError:
        pass
    service.write_key_file(path, key)


def _policy(args: argparse.Namespace, fail: Callable[[int, str], int]) -> sandbox.Policy | None | int:
    """The children's policy from the flags, or an exit code after reporting why it cannot be had."""
    user = None
    if args.child_user is not None:
        if os.geteuid() != 0:
            return fail(2, "--child-user needs the template to run as root")
        try:
            user = sandbox.lookup_user(args.child_user)
        except KeyError as e:
            return fail(2, str(e.args[0]))
    if args.child_memory_limit is not None and args.child_memory_limit < 0:
        return fail(2, "--child-memory-limit must be >= 0")
    if args.no_sandbox:
        log.warning("--no-sandbox: children run WITHOUT the seccomp filter, resource limits and "
                    "no-new-privileges; every child can open files, connect and exec as uid %d. "
                    "For debugging only.", user.uid if user else os.geteuid())
        return sandbox.Policy(seccomp=False, memory_limit=None, user=user) if user else None
    limit: int | None = sandbox.DEFAULT_MEMORY_LIMIT
    if args.child_memory_limit is not None:
        limit = args.child_memory_limit << 20 if args.child_memory_limit else None
    return sandbox.Policy(seccomp=True, memory_limit=limit, user=user)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="walredo-template", description="Run the walredo template fork server in the foreground.",
        epilog="Also: walredo-template status --socket PATH [--key-file PATH] [--json] lists a running "
               "template's children with their memory (see walredo-template status --help). Exit codes: 0 "
               "clean stop, 2 bad arguments or worker import failure, 3 socket, key or metrics set-up failure.")
    parser.add_argument("--socket", required=True, help="control socket path (its directory becomes 0700)")
    parser.add_argument("--worker", default=DEFAULT_WORKER, help="MODULE:FUNCTION run as main(sock, tenant)")
    parser.add_argument(
        "--pool", type=int, default=None, metavar="N",
        help=f"children kept pre-forked, waiting for a tenant, 0 to {MAX_POOL_SIZE} "
             f"(default: ${POOL_ENV} or {default_pool_size()}; 0 = fork on request)",
    )
    parser.add_argument("--key-file", default=None, metavar="PATH",
                        help="stable key file: created (0600) if missing, reused across restarts, never removed "
                             "(default: a fresh SOCKET.key, removed on exit)")
    parser.add_argument("--log-level", choices=service.LOG_LEVELS, default=None,
                        help="stderr log level (default: info)")
    parser.add_argument("--metrics-port", type=int, default=None, metavar="N",
                        help="serve Prometheus metrics on http://HOST:N/metrics (default: off; 0 = a free port)")
    parser.add_argument("--metrics-host", default="127.0.0.1", metavar="HOST",
                        help="address of the metrics endpoint (default: 127.0.0.1)")
    parser.add_argument("--child-memory-limit", type=int, default=None, metavar="MIB",
                        help="each child's address-space limit in MiB (default 256; 0 = none)")
    parser.add_argument("--child-user", default=None, metavar="USER",
                        help="children drop to this user and its group before the sandbox (root only)")
    parser.add_argument("--no-sandbox", action="store_true",
                        help="children run without the sandbox (seccomp, limits): for debugging only")
    parser.add_argument("--parent-fd", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def _check_arguments(args: argparse.Namespace) -> str | None:
    """What is wrong with the arguments (exit 2), checked before anything is touched; None if nothing."""
    try:
        st = os.lstat(args.socket)
    except FileNotFoundError:
        pass
    except OSError as e:
        return f"--socket {args.socket}: {e.strerror}"
    else:
        if not stat.S_ISSOCK(st.st_mode):
            return f"--socket {args.socket} exists and is not a socket; refusing to replace it"
    if args.pool is not None:
        if not 0 <= args.pool <= MAX_POOL_SIZE:
            return f"--pool must be from 0 to {MAX_POOL_SIZE}, got {args.pool}"
    else:
        try:
            args.pool = pool_size_from_env()
        except ValueError as e:
            return str(e)
    if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
        return f"--metrics-port must be from 0 to 65535, got {args.metrics_port}"
    if args.key_file is not None and args.parent_fd is not None:
        return "--key-file and --parent-fd exclude each other"
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["status"]:
        from forkserver import template_status  # a client: asyncio and psutil stay out of the template

        return template_status.main(argv[1:])
    args = _parser().parse_args(argv)
    # Launched by the library, the template stays quiet unless asked: its stderr is the parent's.
    service.setup_logging(args.log_level or ("warning" if args.parent_fd is not None else "info"))

    def fail(code: int, msg: str) -> int:
        log.error("%s", msg)
        return code

    problem = _check_arguments(args)
    if problem is not None:
        return fail(2, problem)
    policy = _policy(args, fail)
    if isinstance(policy, int):
        return policy

    try:
        worker = load_worker(args.worker)  # the preload: children inherit it already imported
    except Exception as e:
        return fail(2, f"cannot load worker {args.worker}: {type(e).__name__}: {e}")

    # Held off until the template's handlers are in place (Template.serve unblocks them): a SIGTERM during
    # the set-up then becomes a clean stop instead of leaving the socket and key file behind.
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        return _set_up_and_serve(args, worker, policy, fail)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def _set_up_and_serve(args: argparse.Namespace, worker: Callable[..., object], policy: sandbox.Policy | None,
                      fail: Callable[[int, str], int]) -> int:
    key_file = None
    template = None
    try:
        # Read (or made) straight into memory the children do not inherit: no bytes copy ever exists here.
        if args.parent_fd is not None:
            key = Key.from_fd(args.parent_fd)
            os.set_blocking(args.parent_fd, False)
        elif args.key_file is not None:
            prepare_socket_dir(args.socket)  # the key file usually lives beside the socket
            key_file = os.path.abspath(args.key_file)
            key, created = service.open_key_file(key_file)
            log.info("%s key file %s", "created the" if created else "reusing the", key_file)
        else:
            key = Key.generate()
        template = Template(args.socket, worker, key, parent_fd=args.parent_fd, pool_size=args.pool,
                            policy=policy, metrics_port=args.metrics_port, metrics_host=args.metrics_host,
                            notify=service.notify if args.parent_fd is None else None)
        template.bind()
        if args.parent_fd is None and key_file is None:
            key_file = template.socket_path + ".key"
            _write_key_file(key_file, key)
            template.key_file = key_file  # ours: removed on exit
    except service.KeyFileError as e:
        return fail(3, f"cannot use the key file {e.filename}: {e.strerror}")
    except (OSError, EOFError, ValueError) as e:  # SandboxError is an OSError (no libseccomp)
        if template is not None:
            template.close()
        return fail(3, f"cannot set up {args.socket}: {e}")

    key_desc = key_file if key_file else f"fd:{args.parent_fd}"
    metrics = template.metrics_address
    metrics_desc = f" metrics={metrics[0]}:{metrics[1]}" if metrics else ""
    # Our own title says what we serve; it also sets up setproctitle here once, instead of in every child.
    setproctitle.setproctitle(f"walredo-template --socket {template.socket_path} --worker {args.worker}")

    def ready() -> None:
        print(f"walredo-template ready pid={os.getpid()} socket={template.socket_path} key={key_desc}"
              f"{metrics_desc}", flush=True)
        if args.parent_fd is not None:
            # Launched by the library, which stops reading stdout after the readiness line.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.close(devnull)
        else:
            service.notify("READY=1")

    return template.serve(on_ready=ready)


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["main", "load_worker", "DEFAULT_WORKER", "prepare_socket_dir"]
