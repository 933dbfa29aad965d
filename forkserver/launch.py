"""Parent side: starting and stopping a template process we own (``TemplateClient.launch``).

The blocking functions here run in an executor thread, never on the parent's event-loop thread: a
``Popen`` of ``python -m forkserver.launcher`` (its own process group, our ``sys.path``, the key over an
inherited pipe whose EOF later tells the template we died), the wait for its readiness line, and the
SIGTERM / SIGKILL / reap that stops it.
"""

from __future__ import annotations

import asyncio
import functools
import os
import selectors
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass

from forkserver import fdpass
from forkserver.errors import TemplateUnavailable

__all__ = ["LaunchSpec", "launcher_args", "read_key_file", "remove_dir_later", "start_template", "stop_template"]


@dataclass(frozen=True)
class LaunchSpec:
    """How a launched client (re)starts the template it owns."""

    worker: str
    python: str
    dir: str  # the private mkdtemp directory of the socket, removed on close
    start_timeout: float
    args: tuple[str, ...]  # extra launcher flags (sandbox, child user, memory limit, pool)


def launcher_args(*, sandbox: bool, child_user: str | None, child_memory_limit: int | None,
                  pool: int | None) -> tuple[str, ...]:
    """The launcher flags for ``TemplateClient.launch``'s options. Errors: ``ValueError`` (a negative
    memory limit)."""
    extra: list[str] = []
    if not sandbox:
        extra.append("--no-sandbox")
    if child_user is not None:
        extra += ["--child-user", str(child_user)]
    if child_memory_limit is not None:
        if child_memory_limit < 0:
            raise ValueError("child_memory_limit must be >= 0")
        extra += ["--child-memory-limit", str(max(1, child_memory_limit >> 20) if child_memory_limit else 0)]
    if pool is not None:
        extra += ["--pool", str(int(pool))]
    return tuple(extra)


def remove_dir_later(fut: asyncio.Future[str]) -> None:
    # A launch cancelled while its directory was being made: remove it once made (still off the loop).
    if not fut.cancelled() and fut.exception() is None:
        asyncio.get_running_loop().run_in_executor(
            None, functools.partial(shutil.rmtree, fut.result(), ignore_errors=True))


def read_key_file(path: str | os.PathLike[str]) -> bytes:
    with open(path) as f:
        return bytes.fromhex(f.read().strip())


def template_env() -> dict[str, str]:
    # The template must import what we can (the worker module may live beside the caller's code, e.g.
    # tests/): hand it our sys.path.
    env = dict(os.environ)
    paths = [os.path.abspath(p) if p else os.getcwd() for p in sys.path]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def start_template(python: str, worker: str, socket_path: str, key: bytes, timeout: float,
                    extra_args: tuple[str, ...] = ()) -> tuple[subprocess.Popen[bytes], int]:
    """Blocking (executor thread): start the template, wait for its readiness line.

    Returns ``(Popen, parent_pipe_w)``. Errors: :class:`TemplateUnavailable` (the process is gone)."""
    r, w = os.pipe()
    try:
        os.write(w, key)
        proc = subprocess.Popen(
            [python, "-m", "forkserver.launcher", "--socket", socket_path, "--worker", worker,
             "--parent-fd", str(r), *extra_args],
            pass_fds=(r,), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=template_env(),
            process_group=0,  # its own group: a Ctrl-C aimed at us must not kill it behind our back
        )
    except BaseException:
        os.close(w)
        raise
    finally:
        os.close(r)
    stdout = proc.stdout
    assert stdout is not None  # stdout=PIPE
    try:
        line = b""
        with selectors.DefaultSelector() as sel:
            sel.register(stdout, selectors.EVENT_READ)
            loop_deadline = time.monotonic() + timeout
            while not line.endswith(b"\n"):
                remaining = loop_deadline - time.monotonic()
                if remaining <= 0 or not sel.select(remaining):
                    raise TemplateUnavailable(f"template did not become ready within {timeout} s")
                chunk = os.read(stdout.fileno(), 4096)
                if not chunk:
                    break
                line += chunk
        if not line.startswith(b"walredo-template ready "):
            proc.wait(timeout=timeout)
            raise TemplateUnavailable(f"template failed to start (exit status {proc.returncode})")
    except BaseException:
        stop_template(proc, w, timeout)
        raise
    finally:
        stdout.close()
    return proc, w


def stop_template(proc: subprocess.Popen[bytes], pipe_w: int | None, timeout: float = 5.0) -> None:
    """Blocking (executor thread): SIGTERM (children keep serving), escalate to SIGKILL, reap; then close the
    parent pipe. Closing the pipe first would mean "parent died" and the template would kill its children."""
    try:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    finally:
        if pipe_w is not None:
            fdpass.close_fds([pipe_w])
