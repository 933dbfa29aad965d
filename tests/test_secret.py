"""forkserver.secret: the template's key in a page that fork wipes, and the ways in and out of it that make
no ordinary copy."""

import os

import pytest

from forkserver.secret import KEY_SIZE, Key

RAW = bytes(range(1, 33))


def test_from_fd_generate_and_hex_file(tmp_path):
    r, w = os.pipe()
    os.write(w, RAW[:10])
    os.write(w, RAW[10:])
    key = Key.from_fd(r)
    assert bytes(key.buffer) == RAW and len(key) == KEY_SIZE
    os.close(w)
    with pytest.raises(EOFError):
        Key.from_fd(r)  # closed before 32 bytes
    os.close(r)
    path = tmp_path / "k"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    key.write_hex(fd)
    os.close(fd)
    assert path.read_text() == RAW.hex() + "\n"
    assert bytes(key._mm[KEY_SIZE:KEY_SIZE + 65]) == bytes(65)  # the hex scratch is cleared again
    assert Key.generate().buffer.tobytes() != Key.generate().buffer.tobytes()
    with pytest.raises(ValueError):
        Key.from_bytes(b"short")


def test_a_forked_child_sees_no_key():
    key = Key.from_bytes(RAW)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # never returns into pytest
        try:
            os.write(w, bytes(key.buffer))
        finally:
            os._exit(0)
    os.close(w)
    seen = os.read(r, 64)
    os.close(r)
    os.waitpid(pid, 0)
    assert seen == bytes(KEY_SIZE)  # MADV_WIPEONFORK: zeros in the child
    assert bytes(key.buffer) == RAW  # the template keeps it
    key.close()
    key.close()
