"""Sampling profiles of benchmark processes with py-spy (the ``bench`` extra), summarised as tables.

:class:`PySpy` attaches ``py-spy record`` to a running process (``--nonblocking`` unless native frames are
asked for) for the duration of an ``async with`` block and writes collapsed stacks;
:func:`top_frames` turns them into "where the time goes": the functions most often on the top of the
stack (self time) and most often anywhere on it (inclusive time). Without py-spy, profiling is skipped
with a note.
"""

from __future__ import annotations

import asyncio
import collections
import shutil
import signal
import sys
from pathlib import Path

from benchmarks.report import Table


def py_spy_path() -> str | None:
    """The py-spy executable next to this interpreter, or on ``PATH``; ``None`` when not installed."""
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


class PySpy:
    """``async with PySpy(pid, out):`` samples ``pid`` at ``rate`` Hz into ``out`` (collapsed stacks).

    ``native`` adds C frames (where the time goes inside extensions and at the kernel boundary); py-spy
    cannot unwind native stacks without pausing the process, so a native profile pauses it briefly at each
    sample (use it on a profiling pass whose numbers are not reported). ``ok`` says
    whether a profile was written. Leaving the block stops py-spy with SIGINT (it then writes the file) and
    reaps it; it is killed if it does not finish within 10 s.
    """

    def __init__(self, pid: int, out: Path, rate: int = 500, native: bool = False) -> None:
        self.pid = pid
        self.out = out
        self.rate = rate
        self.native = native
        self.proc: asyncio.subprocess.Process | None = None
        self.ok = False

    async def __aenter__(self) -> PySpy:
        exe = py_spy_path()
        if exe is None:
            return self
        self.out.parent.mkdir(parents=True, exist_ok=True)
        cmd = [exe, "record", "--pid", str(self.pid), "--rate", str(self.rate), "--format", "raw",
               "--output", str(self.out)]
        cmd.append("--native" if self.native else "--nonblocking")
        self.proc = await asyncio.create_subprocess_exec(
            *cmd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL)
        await asyncio.sleep(0.5)  # let it attach before the measured work starts
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        self.ok = self.out.exists() and self.out.stat().st_size > 0


def _frame_name(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (file.py:123)"
    name, _, where = frame.partition(" (")
    if where:
        where = where.rstrip(")")
        return f"{name} ({where.rsplit('/', 1)[-1]})"
    return name


def top_frames(collapsed: Path, title: str, n: int = 12) -> Table:
    """The ``n`` frames with the most self samples, with their inclusive share, from a collapsed-stacks file."""
    self_count: collections.Counter[str] = collections.Counter()
    incl_count: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        k = int(count)
        total += k
        frames = [_frame_name(f) for f in stack.split(";")]
        self_count[frames[-1]] += k
        for f in set(frames):
            incl_count[f] += k
    table = Table(title, ["function (file:line)", "self %", "inclusive %"],
                  note=f"py-spy, {total} samples of non-idle threads.")
    for frame, k in self_count.most_common(n):
        table.add(f"`{frame}`", f"{100 * k / max(1, total):.1f}", f"{100 * incl_count[frame] / max(1, total):.1f}")
    return table
