"""The template's listening control socket: a private directory, a 0600 socket, and cleaning up after it.

Runs in the template process (and in ``walredo-template`` before it serves). Only the uid that owns the
template may connect: the socket's directory is 0700 and ours, the socket file is born 0600 (no window in
which another user could connect), and each accepted peer's uid is checked again (``SO_PEERCRED``) before
the handshake.

A path that already exists is replaced only if it is a socket nobody answers on (a template that died
without cleaning up; logged as a warning); anything else there — a regular file, a directory, a symlink, a
live server — is refused and left untouched.
"""

from __future__ import annotations

import logging
import os
import socket
import stat

__all__ = ["listen", "prepare_socket_dir", "unlink_if_ours", "check_not_other_file", "DEFAULT_BACKLOG"]

log = logging.getLogger(__name__)

DEFAULT_BACKLOG = 128  # the template passes its connection cap instead (the kernel caps it at somaxconn)


def prepare_socket_dir(path: str) -> None:
    """Create the socket's directory (mode 0700) if missing, and insist it is ours and private.

    Errors: ``PermissionError`` if it is not a directory owned by us with mode 0700 (group/other bits set)."""
    d = os.path.dirname(os.path.abspath(path))
    try:
        os.mkdir(d, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(d)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise PermissionError(f"socket directory {d} must be a directory owned by uid {os.getuid()} "
                              f"with mode 0700 (is {oct(stat.S_IMODE(st.st_mode))}, uid {st.st_uid})")


def listen(path: str, backlog: int = DEFAULT_BACKLOG) -> tuple[socket.socket, tuple[int, int]]:
    """Create the listening socket (mode 0600, non-blocking, ``backlog`` pending connections) at ``path``;
    replaces a stale socket file. Returns the socket and the ``(st_dev, st_ino)`` of its file, for
    :func:`unlink_if_ours`.

    Errors: ``FileExistsError`` when the path exists and is not a socket (it is left untouched) or a live
    server answers on it; ``PermissionError`` for an unsafe directory."""
    prepare_socket_dir(path)
    check_not_other_file(path)
    if os.path.lexists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            # Checked again right before the unlink: only ever remove a socket (the probe's ECONNREFUSED
            # alone does not prove it, and the path may have changed since the first check).
            check_not_other_file(path)
            try:
                os.unlink(path)  # stale: a previous template died without cleaning up
            except FileNotFoundError:
                pass
            else:
                log.warning("replaced the stale socket %s (a previous template died without removing it)", path)
        except OSError as e:
            raise FileExistsError(f"{path} exists and is not a usable socket: {e}") from None
        else:
            raise FileExistsError(f"a server is already listening on {path}")
        finally:
            probe.close()
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # the socket file is born 0600: no window where another user may connect
    try:
        lst.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    st = os.stat(path)
    lst.listen(backlog)
    lst.setblocking(False)
    return lst, (st.st_dev, st.st_ino)


def check_not_other_file(path: str) -> None:
    """Raise ``FileExistsError`` if ``path`` exists and is anything but a socket (a symlink included)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(f"{path} exists and is not a socket ({_kind(st.st_mode)}); refusing to replace it")


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISLNK, "a symlink"), (stat.S_ISFIFO, "a FIFO")):
        if test(mode):
            return name
    return "a special file"


def unlink_if_ours(path: str, ino: tuple[int, int] | None) -> None:
    """Remove ``path`` only if it is still the socket we bound (a successor may have replaced it)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if (st.st_dev, st.st_ino) == ino:
        os.unlink(path)
