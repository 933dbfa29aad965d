"""Short, bounded versions of every ``scripts/chaos`` scenario (benchmarks/chaos.py): seconds each, a few dozen
kills. No timing is asserted; every row must have 0 wrong pages, 0 hung requests, nothing left behind and its
scenario's expectations met.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import chaos  # noqa: E402


def _run(name: str) -> chaos.Figures:
    import asyncio

    figs, left = asyncio.run(chaos.campaign([name], chaos.Sizes.short()))
    (fig,) = figs
    print(chaos.table(figs, left))
    assert not left, left
    assert fig.wrong == 0
    assert fig.hung == 0
    assert fig.leftovers == 0
    assert not fig.problems, fig.problems
    return fig


@pytest.mark.parametrize("name", ["kill-slow", "kill-fast"])
def test_kill_storm(name: str) -> None:
    fig = _run(name)
    assert fig.answers > 0


def test_template_kill() -> None:
    fig = _run("template-kill")
    assert fig.recovery


def test_template_stop() -> None:
    """A cold request with the template SIGSTOPped fails within request_timeout; warm tenants answer."""
    _run("template-stop")


def test_child_stop() -> None:
    fig = _run("child-stop")
    assert fig.failed["RedoTimeout"] == chaos.Sizes.short().child_stops


def test_parent_kill() -> None:
    fig = _run("parent-kill")
    assert len(fig.recovery) == chaos.Sizes.short().parent_kills


def test_emfile() -> None:
    fig = _run("emfile")
    assert fig.answers > 0


def test_soak() -> None:
    """Cells follow live processes (not tenants ever seen) and every child killed is counted broken: both
    failed before the manager forgot retired tenants and counted stops by what happened to the child."""
    fig = _run("soak")
    assert fig.drift == "flat"


def test_drift_verdict() -> None:
    flat = [{"rss": 50.0, "fds": 20, "live": 8, "zombies": 0, "template": 26.0, "cells": 8} for _ in range(10)]
    assert chaos.drift(flat, live_bound=20)[0] == "flat"
    grows = [dict(s, cells=8 + 10 * i) for i, s in enumerate(flat)]
    verdict, problems, _ = chaos.drift(grows, live_bound=20)
    assert verdict == "cells grows" and problems


def test_script_rejects_unknown_scenario() -> None:
    out = subprocess.run([str(REPO / "scripts" / "chaos"), "--scenario", "nope"], capture_output=True, text=True,
                         timeout=60, env=dict(os.environ))
    assert out.returncode != 0 and "unknown scenario" in out.stderr
