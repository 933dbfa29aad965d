"""What running the template as a service needs: logging set-up, systemd readiness, the key file.

Runs in the template process (the launcher calls these before and after binding). Nothing here is needed
by a walredo child, and nothing here imports asyncio.

- :func:`setup_logging` configures stdlib logging on stderr: with timestamps on a terminal or a file, and,
  when stderr *is* the journal (systemd sets ``JOURNAL_STREAM`` to its device:inode), without timestamps
  and with the ``<N>`` syslog priority prefix journald understands, so levels survive into ``journalctl -p``.
- :func:`notify` sends an ``sd_notify`` datagram (``READY=1``, ``STOPPING=1``, ``STATUS=…``) to
  ``$NOTIFY_SOCKET`` when it is set (``Type=notify`` units); a no-op otherwise. It never raises: a service
  manager that went away must not stop the template.
- :func:`open_key_file` gives the template a key that survives restarts: a ``--key-file`` that exists is
  checked (a regular file, owned by us, no group/other access, 64 hex digits) and reused, one that does
  not is created 0600 with a fresh key. A client that reconnects after a restart authenticates with the
  same file.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import sys
from typing import TextIO

from forkserver.secret import KEY_SIZE, Key

__all__ = ["KeyFileError", "JournalFormatter", "setup_logging", "notify", "open_key_file", "write_key_file",
           "LOG_LEVELS"]

LOG_LEVELS = ("debug", "info", "warning", "error")

# syslog priorities (sd-daemon.h SD_ERR … SD_DEBUG) for logging's levels
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


class KeyFileError(OSError):
    """A ``--key-file`` that cannot be used: not a regular file, not ours, readable by others, or not a key.
    Carries the path in ``filename``."""


class JournalFormatter(logging.Formatter):
    """``<priority>logger: message``: journald stores the priority and adds its own timestamp."""

    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 6 if record.levelno < logging.WARNING else 3)
        return f"<{prio}>" + super().format(record).replace("\n", f"\n<{prio}>")


def _stderr_is_journal(stream: TextIO) -> bool:
    spec = os.environ.get("JOURNAL_STREAM", "")
    dev, sep, ino = spec.partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(stream.fileno())
        return st.st_dev == int(dev) and st.st_ino == int(ino)
    except (OSError, ValueError, AttributeError):
        return False


def setup_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """Route the root logger to ``stream`` (stderr) at ``level`` (one of :data:`LOG_LEVELS`).

    Errors: ``ValueError`` for an unknown level."""
    if level not in LOG_LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    stream = stream if stream is not None else sys.stderr
    handler = logging.StreamHandler(stream)
    if _stderr_is_journal(stream):
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to the service manager; True if it was sent. Never raises."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
        return True
    except OSError as e:
        logging.getLogger(__name__).warning("sd_notify %s to %s failed: %s", state, address, e)
        return False


def open_key_file(path: str) -> tuple[Key, bool]:
    """The key in ``path``, creating the file (0600, a fresh key) if it does not exist. Returns the key and
    whether the file was created.

    Errors: :class:`KeyFileError` for a file that is not a regular file we own with no group/other access,
    or whose content is not 64 hex digits; other ``OSError`` from the file system."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return _create_key_file(path), True
    except OSError as e:
        raise KeyFileError(e.errno, f"cannot open key file: {e.strerror}", path) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(0, "key file is not a regular file", path)
        if st.st_uid != os.geteuid():
            raise KeyFileError(0, f"key file is owned by uid {st.st_uid}, not by us (uid {os.geteuid()})", path)
        if st.st_mode & 0o077:
            raise KeyFileError(0, f"key file is accessible to others (mode {stat.S_IMODE(st.st_mode):o}); "
                                  "chmod 600 it", path)
        if st.st_size not in (2 * KEY_SIZE, 2 * KEY_SIZE + 1):
            raise KeyFileError(0, f"key file must hold {2 * KEY_SIZE} hex digits", path)
        try:
            return Key.from_hex_fd(fd), False
        except ValueError as e:
            raise KeyFileError(0, f"key file must hold {2 * KEY_SIZE} hex digits: {e}", path) from None
    finally:
        os.close(fd)


def _create_key_file(path: str) -> Key:
    key = Key.generate()
    try:
        write_key_file(path, key)
    except OSError as e:
        raise KeyFileError(e.errno, f"cannot create key file: {e.strerror}", path) from None
    return key


def write_key_file(path: str, key: Key) -> None:
    """Create ``path`` (0600, refusing one that exists or a symlink) holding ``key`` as hex, written from the
    key's own page (no hex copy in ordinary memory); a partly written file is removed. Errors: ``OSError``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        key.write_hex(fd)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
