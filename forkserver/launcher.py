"""``walredo-template``: run the template in the foreground (systemd style).

    walredo-template --socket PATH [--worker MOD:FUNC] [--pool N]
                     [--child-memory-limit MIB] [--child-user USER] [--no-sandbox]

Preloads the worker, binds ``PATH`` (directory 0700, socket 0600), writes a fresh 32-byte key as hex to
``PATH.key`` (0600; give it to ``TemplateClient.connect(PATH, key=PATH + ".key")``), prints one readiness line
on stdout::

    walredo-template ready pid=<pid> socket=<PATH> key=<PATH.key>

and serves until SIGTERM/SIGINT, removing the socket and key file on the way out.

``TemplateClient.launch`` runs the same entry point with ``--parent-fd N`` instead of a key file: it reads the
32 raw key bytes from fd ``N`` and afterwards treats EOF on it as "the launching parent died".

Every child enters the sandbox (:mod:`forkserver.sandbox`) before it serves: ``--child-memory-limit`` sets
its address-space limit (MiB, default 256; 0 = none), ``--child-user USER`` (root only) makes it drop to
that user and group first, ``--no-sandbox`` turns the policy off for debugging (logged on every start).
The key lives in memory the children do not inherit (:mod:`forkserver.secret`).

Exit codes: 0 clean stop, 2 bad arguments / worker import failure, 3 socket or key set-up failure.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable

import setproctitle

from forkserver import sandbox
from forkserver.child import DEFAULT_WORKER
from forkserver.secret import Key
from forkserver.template import Template, prepare_socket_dir


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
    return obj


def _write_key_file(path: str, key: Key) -> None:
    try:
        os.unlink(path)  # a stale key from a template that died; bind() already proved none is live
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        key.write_hex(fd)  # from the key's own page: no hex copy in ordinary memory
    finally:
        os.close(fd)


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
        print("walredo-template: WARNING: --no-sandbox: children run WITHOUT the seccomp filter, "
              "resource limits and no-new-privileges; every child can open files, connect and exec as "
              f"uid {user.uid if user else os.geteuid()}. For debugging only.", file=sys.stderr, flush=True)
        return sandbox.Policy(seccomp=False, memory_limit=None, user=user) if user else None
    limit: int | None = sandbox.DEFAULT_MEMORY_LIMIT
    if args.child_memory_limit is not None:
        limit = args.child_memory_limit << 20 if args.child_memory_limit else None
    return sandbox.Policy(seccomp=True, memory_limit=limit, user=user)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="walredo-template", description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", required=True, help="control socket path (its directory becomes 0700)")
    parser.add_argument("--worker", default=DEFAULT_WORKER, help="MODULE:FUNCTION run as main(sock, tenant)")
    parser.add_argument(
        "--pool", type=int, default=None,
        help="children kept pre-forked, waiting for a tenant "
             "(default: $WALREDO_TEMPLATE_POOL or 1; 0 = fork on request)",
    )
    parser.add_argument("--child-memory-limit", type=int, default=None, metavar="MIB",
                        help="each child's address-space limit in MiB (default 256; 0 = none)")
    parser.add_argument("--child-user", default=None, metavar="USER",
                        help="children drop to this user and its group before the sandbox (root only)")
    parser.add_argument("--no-sandbox", action="store_true",
                        help="children run without the sandbox (seccomp, limits): for debugging only")
    parser.add_argument("--parent-fd", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    def fail(code: int, msg: str) -> int:
        print(f"walredo-template: {msg}", file=sys.stderr, flush=True)
        return code

    policy = _policy(args, fail)
    if isinstance(policy, int):
        return policy

    try:
        worker = load_worker(args.worker)  # the preload: children inherit it already imported
    except Exception as e:
        return fail(2, f"cannot load worker {args.worker}: {type(e).__name__}: {e}")

    key_file = None
    try:
        # Read (or made) straight into memory the children do not inherit: no bytes copy ever exists here.
        if args.parent_fd is not None:
            key = Key.from_fd(args.parent_fd)
            os.set_blocking(args.parent_fd, False)
        else:
            key = Key.generate()
        template = Template(args.socket, worker, key, parent_fd=args.parent_fd, pool_size=args.pool,
                            policy=policy)
        template.bind()
        if args.parent_fd is None:
            key_file = template.socket_path + ".key"
            _write_key_file(key_file, key)
            template.key_file = key_file
    except (OSError, EOFError, ValueError) as e:  # SandboxError is an OSError (no libseccomp)
        return fail(3, f"cannot set up {args.socket}: {e}")

    key_desc = key_file if key_file else f"fd:{args.parent_fd}"
    # Our own title says what we serve; it also sets up setproctitle here once, instead of in every child.
    setproctitle.setproctitle(f"walredo-template --socket {template.socket_path} --worker {args.worker}")
    print(f"walredo-template ready pid={os.getpid()} socket={template.socket_path} key={key_desc}", flush=True)
    if args.parent_fd is not None:
        # Launched by the library, which stops reading stdout after the readiness line.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
    return template.serve()


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["main", "load_worker", "DEFAULT_WORKER", "prepare_socket_dir"]
