"""The floor for request latency: a raw asyncio unix-socket echo, measured in the same run.

Server: a separate process (``python -m benchmarks.baseline_worker echo FD``) doing a blocking
recv/sendall loop, the same shape as the walredo child but with no decoding. Client: asyncio streams with
in-order pipelining (:class:`benchmarks.framed_client.FramedClient`), sending the very ping frame the
walredo benchmark sends. What walredo adds on top of this is our protocol, process and manager code.
"""

from __future__ import annotations

import asyncio

from benchmarks.framed_client import FramedClient
from benchmarks.spawn_methods import exec_baseline_worker
from walredo_template import protocol

PING = protocol.encode_ping()


class EchoServer:
    """An echo server process and one pipelined client connection to it."""

    def __init__(self, proc: asyncio.subprocess.Process, client: FramedClient) -> None:
        self.proc = proc
        self.client = client

    @classmethod
    async def start(cls) -> EchoServer:
        """Start the server process (off the measured path) and connect. Raises ``OSError``."""
        proc, parent = await exec_baseline_worker("echo")
        try:
            client = await FramedClient.open(parent)
        except BaseException:
            parent.close()
            proc.kill()
            await proc.wait()
            raise
        return cls(proc, client)

    async def ping(self) -> None:
        """One echoed ping frame."""
        await self.client.request(PING)

    async def aclose(self) -> None:
        """Close the connection (the server exits on EOF) and reap the server. Idempotent."""
        await self.client.aclose()
        try:
            await asyncio.wait_for(self.proc.wait(), 5)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
