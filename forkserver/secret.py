"""The template's control-socket key, kept where its children cannot find it.

Runs in the template (and wherever a :class:`Key` is made). Every child is a fork of the template, so
whatever the template holds in ordinary memory — a ``bytes`` key, a connection object's copy, the buffer it
was read into — every child holds too, and a subverted child could authenticate to the control socket and
have the template spawn for it. A :class:`Key` lives in a private anonymous page marked
``MADV_WIPEONFORK`` (Linux 4.14; ``MADV_DONTFORK`` where that is missing): a child sees zeros there (or no
mapping). It is also ``MADV_DONTDUMP`` (not in core dumps).

The bytes never pass through a Python object: :meth:`Key.from_fd` reads them from the launching parent's
pipe straight into the page (``readv``), :meth:`Key.generate` fills it from ``/dev/urandom`` the same way,
:meth:`Key.write_hex` hex-encodes into the page and writes from there, and :meth:`Key.mac` hands the page to
OpenSSL's one-shot HMAC (``hmac.digest``), which copies the key into memory it clears when done.
"""

from __future__ import annotations

import hmac
import mmap
import os

__all__ = ["KEY_SIZE", "Key"]

KEY_SIZE = 32
_HEX = b"0123456789abcdef"
_HEX_VALUE = [int(chr(c), 16) if chr(c) in "0123456789abcdefABCDEF" else -1 for c in range(256)]
# Linux's value on every architecture; CPython's mmap module only names it when built against headers that
# have it (the 3.11 here does not).
_MADV_WIPEONFORK = getattr(mmap, "MADV_WIPEONFORK", 18)


class Key:
    """A 32-byte HMAC key in a page that fork does not copy. Not copyable into ``bytes`` on purpose: pass the
    object. Errors of the constructors: ``OSError`` (mmap/madvise/read), ``EOFError`` (short key pipe),
    ``ValueError`` (wrong size)."""

    __slots__ = ("_mm", "_view")

    def __init__(self) -> None:
        self._mm = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE)
        try:
            self._mm.madvise(_MADV_WIPEONFORK)
        except OSError:
            self._mm.madvise(mmap.MADV_DONTFORK)  # older kernel: the child has no mapping there at all
        try:
            self._mm.madvise(mmap.MADV_DONTDUMP)
        except (AttributeError, OSError):
            pass
        self._view = memoryview(self._mm)[:KEY_SIZE]

    @classmethod
    def from_fd(cls, fd: int) -> Key:
        """Read exactly 32 bytes from ``fd`` (blocking) into a new key."""
        key = cls()
        got = 0
        while got < KEY_SIZE:
            n = os.readv(fd, [key._view[got:]])
            if not n:
                raise EOFError("the key pipe closed before the whole key was sent")
            got += n
        return key

    @classmethod
    def generate(cls) -> Key:
        """A fresh random key."""
        fd = os.open("/dev/urandom", os.O_RDONLY | os.O_CLOEXEC)
        try:
            return cls.from_fd(fd)
        finally:
            os.close(fd)

    @classmethod
    def from_hex_fd(cls, fd: int) -> Key:
        """Read 64 hex digits (and an optional newline) from ``fd`` (a key file) into a new key, decoded in
        the page itself so that no ``str``/``bytes`` copy exists. Errors: ``ValueError`` (not 64 hex digits),
        ``OSError``."""
        key = cls()
        try:
            key._read_hex(fd)
        except BaseException:
            key.close()
            raise
        return key

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Key:
        """A key holding a copy of ``data`` (the caller's copy stays where it is: a template given a
        ``bytes`` key by its caller has that copy in ordinary memory)."""
        if len(data) != KEY_SIZE:
            raise ValueError(f"key must be {KEY_SIZE} bytes")
        key = cls()
        key._view[:] = data
        return key

    def __len__(self) -> int:
        return KEY_SIZE

    @property
    def buffer(self) -> memoryview:
        """The key bytes in place (a view of the page; do not keep copies)."""
        return self._view

    def mac(self, data: bytes) -> bytes:
        """HMAC-SHA256 of ``data`` under this key."""
        return hmac.digest(self._view, data, "sha256")

    def write_hex(self, fd: int) -> None:
        """Write the key as 64 lowercase hex digits and a newline to ``fd`` (the launcher's key file),
        encoded in the page itself so that no ``str``/``bytes`` copy exists."""
        mm = self._mm
        base = KEY_SIZE
        for i in range(KEY_SIZE):
            b = mm[i]
            mm[base + 2 * i] = _HEX[b >> 4]
            mm[base + 2 * i + 1] = _HEX[b & 15]
        mm[base + 2 * KEY_SIZE] = 10
        view = memoryview(mm)[base:base + 2 * KEY_SIZE + 1]
        try:
            while len(view):
                view = view[os.write(fd, view):]
        finally:
            view.release()
            mm[base:base + 2 * KEY_SIZE + 1] = bytes(2 * KEY_SIZE + 1)

    def _read_hex(self, fd: int) -> None:
        mm = self._mm
        base = KEY_SIZE
        view = memoryview(mm)[base:base + 2 * KEY_SIZE + 2]
        try:
            got = 0
            while got < len(view):
                n = os.readv(fd, [view[got:]])
                if not n:
                    break
                got += n
            if got == 2 * KEY_SIZE + 1 and mm[base + 2 * KEY_SIZE] == 10:
                got -= 1
            if got != 2 * KEY_SIZE:
                raise ValueError(f"expected {2 * KEY_SIZE} hex digits")
            for i in range(KEY_SIZE):
                hi, lo = _HEX_VALUE[mm[base + 2 * i]], _HEX_VALUE[mm[base + 2 * i + 1]]
                if hi < 0 or lo < 0:
                    raise ValueError("not a hex digit")
                mm[i] = hi << 4 | lo
        finally:
            view.release()
            mm[base:base + 2 * KEY_SIZE + 2] = bytes(2 * KEY_SIZE + 2)

    def close(self) -> None:
        """Zero and unmap the page. Idempotent."""
        if not self._mm.closed:
            self._view.release()
            self._mm[:] = bytes(len(self._mm))
            self._mm.close()
