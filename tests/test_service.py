"""forkserver.service: sd_notify, the key file, journald-friendly logging, and the shipped systemd unit."""

from __future__ import annotations

import io
import logging
import os
import re
import shlex
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from forkserver import service
from forkserver.secret import KEY_SIZE

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "deploy" / "walredo-template.service"


def test_notify_sends_to_notify_socket(tmp_path, monkeypatch):
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert service.notify("READY=1")
        assert listener.recv(64) == b"READY=1"


def test_notify_abstract_socket(monkeypatch):
    name = f"walredo-test-notify-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert service.notify("STOPPING=1")
        assert listener.recv(64) == b"STOPPING=1"


def test_notify_without_a_service_manager(monkeypatch, tmp_path):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not service.notify("READY=1")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))  # nobody listens: logged, never raised
    assert not service.notify("READY=1")


def test_key_file_is_created_private_and_reused(tmp_path):
    path = str(tmp_path / "template.key")
    key, created = service.open_key_file(path)
    assert created
    assert os.stat(path).st_mode & 0o777 == 0o600
    text = Path(path).read_text()
    assert re.fullmatch(r"[0-9a-f]{64}\n", text)
    assert bytes(key.buffer).hex() == text.strip()
    again, created = service.open_key_file(path)
    assert not created and bytes(again.buffer) == bytes(key.buffer)
    assert Path(path).read_text() == text  # untouched


@pytest.mark.parametrize("case", ["group-readable", "not-hex", "short", "directory", "symlink"])
def test_key_file_refused(tmp_path, case):
    path = tmp_path / "template.key"
    good = "ab" * KEY_SIZE + "\n"
    if case == "group-readable":
        path.write_text(good)
        path.chmod(0o640)
    elif case == "not-hex":
        path.write_text("zz" * KEY_SIZE)
        path.chmod(0o600)
    elif case == "short":
        path.write_text("ab" * 10)
        path.chmod(0o600)
    elif case == "directory":
        path.mkdir()
    else:
        target = tmp_path / "real"
        target.write_text(good)
        target.chmod(0o600)
        path.symlink_to(target)
    before = path.lstat()
    with pytest.raises(service.KeyFileError) as info:
        service.open_key_file(str(path))
    assert info.value.filename == str(path)
    after = path.lstat()
    assert (before.st_mtime_ns, before.st_mode) == (after.st_mtime_ns, after.st_mode)


def test_logging_on_a_terminal_has_timestamps():
    buf = io.StringIO()
    service.setup_logging("info", buf)
    try:
        logging.getLogger("forkserver.test").info("hello %s", "there")
        logging.getLogger("forkserver.test").debug("not shown")
    finally:
        logging.getLogger().handlers.clear()
    line = buf.getvalue()
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO forkserver\.test\[\d+\]: hello there\n$", line)


def test_logging_to_the_journal_has_priorities(tmp_path, monkeypatch):
    with open(tmp_path / "journal", "w+") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        service.setup_logging("debug", stream)
        try:
            logging.getLogger("forkserver.t").warning("lost")
            logging.getLogger("forkserver.t").debug("detail")
        finally:
            logging.getLogger().handlers.clear()
        stream.seek(0)
        assert stream.read() == "<4>forkserver.t: lost\n<7>forkserver.t: detail\n"


def test_unknown_log_level():
    with pytest.raises(ValueError, match="log level"):
        service.setup_logging("loud")


def _unit_values(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", ";", "[")):
            k, _, v = line.partition("=")
            values[k.strip()] = v.strip()
    return values


def test_systemd_unit_says_what_the_design_needs():
    values = _unit_values(UNIT.read_text())
    assert values["KillMode"] == "process"  # stopping the template leaves the tenants' children serving
    assert values["Restart"] == "always"
    assert values["RuntimeDirectoryMode"] == "0700"
    assert values["Type"] == "notify"
    argv = shlex.split(values["ExecStart"])
    assert "--key-file" in argv and "--socket" in argv
    readme = (REPO / "README.md").read_text()
    assert UNIT.read_text().strip() in readme, "the README shows the unit file as shipped"


def test_systemd_unit_verifies(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("no systemd-analyze here: the unit's keys are checked by test_systemd_unit_says_what…")
    exe = shutil.which("walredo-template", path=str(REPO / ".venv" / "bin")) or "/bin/true"
    text = UNIT.read_text().replace("/opt/walredo/.venv/bin/walredo-template", exe)
    text = re.sub(r"^(User|Group)=.*$", r"\1=root", text, flags=re.M)
    unit = tmp_path / "walredo-template.service"
    unit.write_text(text)
    bad = tmp_path / "walredo-bad.service"
    bad.write_text(text.replace("KillMode=process", "KillMode=procss"))
    ok = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    wrong = subprocess.run([analyze, "verify", str(bad)], capture_output=True, text=True)
    assert "kill mode" in wrong.stderr.lower()  # the check can fail: a misspelt value is reported
    assert ok.returncode == 0 and str(unit) not in ok.stderr, ok.stderr


def test_systemd_unit_flags_are_the_launchers():
    from forkserver import launcher

    argv = shlex.split(_unit_values(UNIT.read_text())["ExecStart"])
    args = launcher._parser().parse_args(argv[1:])  # argparse exits 2 on an unknown or malformed flag
    assert args.key_file and args.socket and args.log_level in service.LOG_LEVELS
