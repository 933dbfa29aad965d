"""Each child's stderr reaches its parent's log with its tenant and pid (forkserver.childlog), bounded."""

from __future__ import annotations

import asyncio
import logging

import pytest
from proc_guard import proc_guard  # noqa: F401
from test_client import WORKER
from test_manager import tenant

from forkserver import TemplateClient

pytestmark = pytest.mark.timeout(120)


async def _say(child, text: bytes) -> None:
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(child.socket, b"stderr " + text + b"\n")
    assert await loop.sock_recv(child.socket, 10) == b"ok\n"


async def _lines(caplog, needle: str, want: int, timeout: float = 10.0) -> list[str]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        got = [r.getMessage() for r in caplog.records if r.name == "forkserver.child" and needle in r.getMessage()]
        if len(got) >= want or asyncio.get_running_loop().time() > deadline:
            return got
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("pool_size", [0, 2], ids=["forked-on-request", "from-the-pool"])
async def test_child_stderr_reaches_the_parent_log_with_its_tenant(caplog, proc_guard, pool_size):  # noqa: F811
    caplog.set_level(logging.WARNING, logger="forkserver.child")
    async with TemplateClient.launch(worker=WORKER, pool_size=pool_size) as client:
        proc_guard.watch_dir(client.socket_path.rsplit("/", 1)[0])
        t = tenant()
        child = await client.spawn(t)
        await _say(child, b"hello from the child")
        await _say(child, b"second \xff line")
        got = await _lines(caplog, f"tenant {t} pid {child.pid}: stderr: ", 2)
        assert got == [f"tenant {t} pid {child.pid}: stderr: hello from the child",
                       f"tenant {t} pid {child.pid}: stderr: second \ufffd line"]
        child.close()
        assert await child.wait() == 0


async def test_a_chatty_child_is_bounded_and_never_blocks(caplog, proc_guard):  # noqa: F811
    caplog.set_level(logging.WARNING, logger="forkserver.child")
    async with TemplateClient.launch(worker=WORKER, pool_size=0) as client:
        proc_guard.watch_dir(client.socket_path.rsplit("/", 1)[0])
        t = tenant()
        child = await client.spawn(t)
        long = b"x" * 5000
        for _ in range(300):  # more than the burst: some are dropped, the child never blocks on its pipe
            await _say(child, long)
        await _say(child, b"the end")
        got = await _lines(caplog, f"tenant {t} pid {child.pid}: stderr: ", 200)
        assert 0 < len(got) <= 1000 + 10
        assert all(len(line.split(": stderr: ", 1)[1]) <= 1024 + 40 for line in got)  # cut at 1,024 bytes
        assert (await client.stats())["live"] >= 1  # the template kept serving
        child.close()
        assert await child.wait() == 0
