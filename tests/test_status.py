"""forkserver.status: memory figures of real processes and the operator's table."""

from __future__ import annotations

import os
import subprocess
import sys

from forkserver.status import MIB, ManagerStatus, Memory, TenantStatus, format_table, memories, memory_fields, memory_of


def test_memory_of_a_live_process_and_a_gone_one():
    proc = subprocess.Popen([sys.executable, "-c", "import sys; print(flush=True); sys.stdin.read()"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()  # the interpreter is up (measured earlier, it may not have exec'd yet)
        mem = memory_of(proc.pid)
        assert isinstance(mem, Memory) and mem.rss > MIB
        if os.geteuid() == 0 or mem.source == "smaps":
            assert mem.source == "smaps" and mem.uss is not None and 0 < mem.uss <= mem.rss
            assert mem.pss is not None and mem.uss <= mem.pss <= mem.rss
    finally:
        proc.communicate(b"")
    assert memory_of(proc.pid) is None  # reaped: gone


def test_format_table():
    rows = [
        {"tenant": "a" * 32, "pid": 12, "uss": 3 * MIB // 2, "rss": None, "uptime": 75.0, "last_request_age": 7300},
        {"tenant": "b", "pid": 7, "uss": None, "rss": 10 * MIB, "uptime": 1.25, "last_request_age": None},
    ]
    text = format_table(rows, ["tenant", "pid", "uss", "rss", "uptime", "last_request_age"])
    lines = text.splitlines()
    assert lines[0].split() == ["tenant", "pid", "uss_mib", "rss_mib", "uptime", "last_request_age"]
    assert lines[1].split() == ["a" * 32, "12", "1.50", "-", "75.0s", "2.0h"]
    assert lines[2].split() == ["b", "7", "-", "10.00", "1.2s", "-"]


def test_memories_reads_every_pid_at_once_and_none_for_a_gone_one():
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    proc.communicate(b"")  # reaped: its pid is gone
    got = memories([os.getpid(), proc.pid])
    assert set(got) == {os.getpid(), proc.pid}
    assert got[proc.pid] is None
    mine = got[os.getpid()]
    assert mine is not None and mine.source == "smaps" and mine.uss  # our own smaps is always readable


def test_manager_status_table_oldest_first():
    def tenant(tid: str, uptime: float, **mem) -> TenantStatus:
        return TenantStatus(tenant_id=tid, pid=len(tid), uptime=uptime, requests_served=3, in_flight=0,
                            last_request_age=None, **memory_fields(Memory(4 * MIB, mem.get("uss"), None, "smaps")))

    status = ManagerStatus(template=None, tenants={"b": tenant("b", 1.0), "aa": tenant("aa", 30.0, uss=MIB)})
    lines = status.table().splitlines()
    assert lines[0].split() == ["tenant_id", "pid", "uptime", "requests_served", "in_flight", "last_request_age",
                                "uss_mib", "pss_mib", "rss_mib"]
    assert lines[1].split() == ["aa", "2", "30.0s", "3", "0", "-", "1.00", "-", "4.00"]
    assert lines[2].split()[0] == "b"
    assert memory_fields(None) == {"rss": None, "uss": None, "pss": None, "memory_source": None}
