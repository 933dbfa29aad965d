"""Parent side: starting and stopping a template process we own (``TemplateClient.launch``).

The blocking functions here run in an executor thread, never on the parent's event-loop thread: a
``Popen`` of ``python -m forkserver.launcher`` (its own process group, our ``sys.path``, the key over an
inherited pipe whose EOF later tells the template we died), the wait for its readiness line, and the
SIGTERM / SIGKILL / reap that stops it.

The template's stderr is a pipe we read: until the readiness line, so that a launcher that exits first
(``walredo-template: cannot load worker ...``) is reported with what it said; and afterwards by a small
daemon thread that copies it to our stderr for as long as anyone holds its write end (the template and
its children), as if it were inherited — a pipe nobody drained would stall the template once full.
"""

from __future__ import annotations

import asyncio
import functools
import os
import selectors
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import IO

from forkserver import fdpass
from forkserver.errors import TemplateUnavailable
from forkserver.pool import MAX_POOL_SIZE
from forkserver.secret import KEY_SIZE

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
    memory limit, a pool size outside 0..``MAX_POOL_SIZE``), ``TypeError`` (a pool size that is no int)."""
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
        if isinstance(pool, bool) or not isinstance(pool, int):
            raise TypeError(f"pool_size must be an int, got {type(pool).__name__}")
        if not 0 <= pool <= MAX_POOL_SIZE:
            raise ValueError(f"pool_size must be between 0 and {MAX_POOL_SIZE}, got {pool}")
        extra += ["--pool", str(pool)]
    return tuple(extra)


def remove_dir_later(fut: asyncio.Future[str]) -> None:
    # A launch cancelled while its directory was being made: remove it once made (still off the loop).
    if not fut.cancelled() and fut.exception() is None:
        asyncio.get_running_loop().run_in_executor(
            None, functools.partial(shutil.rmtree, fut.result(), ignore_errors=True))


def read_key_file(path: str | os.PathLike[str]) -> bytes:
    """Blocking: the key in a launcher's key file (hex). Errors: ``OSError`` from ``open`` / ``read``
    (``FileNotFoundError``, ``PermissionError``: ``filename`` is the path); ``ValueError`` naming the path
    when it does not hold a hex key of ``KEY_SIZE`` bytes."""
    with open(path, "rb") as f:
        text = f.read(4 * KEY_SIZE)
    try:
        key = bytes.fromhex(text.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise ValueError(f"key file {os.fspath(path)!r} does not hold a hex key") from None
    if len(key) != KEY_SIZE:
        raise ValueError(f"key file {os.fspath(path)!r} holds {len(key)} bytes, not {KEY_SIZE}")
    return key


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

    Returns ``(Popen, parent_pipe_w)``. Errors: :class:`TemplateUnavailable` (the process is gone; the
    message ends with the last lines it wrote on stderr), ``OSError`` from ``Popen``."""
    r, w = os.pipe()
    try:
        os.write(w, key)
        proc = subprocess.Popen(
            [python, "-m", "forkserver.launcher", "--socket", socket_path, "--worker", worker,
             "--parent-fd", str(r), *extra_args],
            pass_fds=(r,), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=template_env(),
            process_group=0,  # its own group: a Ctrl-C aimed at us must not kill it behind our back
        )
    except BaseException:
        os.close(w)
        raise
    finally:
        os.close(r)
    stdout, stderr = proc.stdout, proc.stderr
    assert stdout is not None and stderr is not None  # stdout=PIPE, stderr=PIPE
    said = _Tail()
    try:
        line = b""
        with selectors.DefaultSelector() as sel:
            sel.register(stdout, selectors.EVENT_READ)
            sel.register(stderr, selectors.EVENT_READ)
            loop_deadline = time.monotonic() + timeout
            while not line.endswith(b"\n"):
                remaining = loop_deadline - time.monotonic()
                ready = sel.select(remaining) if remaining > 0 else []
                if not ready:
                    raise TemplateUnavailable(f"template did not become ready within {timeout} s{said.suffix()}")
                if any(key.fileobj is stderr for key, _ in ready):
                    if not said.copy(stderr.fileno()):
                        sel.unregister(stderr)
                if any(key.fileobj is stdout for key, _ in ready):
                    chunk = os.read(stdout.fileno(), 4096)
                    if not chunk:
                        break
                    line += chunk
        if not line.startswith(b"walredo-template ready "):
            proc.wait(timeout=timeout)
            said.drain(stderr.fileno(), time.monotonic() + 1.0)  # what it said on its way out
            raise TemplateUnavailable(f"template failed to start (exit status {proc.returncode}){said.suffix()}")
    except BaseException:
        stderr.close()
        stop_template(proc, w, timeout)
        raise
    finally:
        stdout.close()
    threading.Thread(target=_copy_stderr, args=(stderr,), name=f"walredo-template-{proc.pid}-stderr",
                     daemon=True).start()
    return proc, w


class _Tail:
    """What the template wrote on stderr before it was ready: copied to ours, its end kept for errors."""

    KEEP = 2048

    def __init__(self) -> None:
        self.data = b""

    def copy(self, fd: int) -> bool:
        """Read one chunk, copy it to our stderr and keep its end; False at EOF."""
        chunk = os.read(fd, 4096)
        if chunk:
            _write_stderr(chunk)
            self.data = (self.data + chunk)[-self.KEEP:]
        return bool(chunk)

    def drain(self, fd: int, deadline: float) -> None:
        # Bounded: a child holding the pipe could keep it open after the template exited.
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while (remaining := deadline - time.monotonic()) > 0 and sel.select(remaining) and self.copy(fd):
                pass

    def suffix(self) -> str:
        text = self.data.decode(errors="replace").strip()
        return f": {text}" if text else ""


def _write_stderr(data: bytes) -> None:
    try:
        while data:
            data = data[os.write(2, data):]
    except OSError:
        pass  # our stderr is gone: the template's output with it


def _copy_stderr(pipe: IO[bytes]) -> None:
    # Daemon thread: copy the template's stderr to ours until every writer (template, children) closed it.
    fd = pipe.fileno()
    try:
        while chunk := os.read(fd, 65536):
            _write_stderr(chunk)
    except OSError:
        pass
    finally:
        pipe.close()


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
