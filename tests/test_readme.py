"""The README's layout section names every module of the runtime packages and the harness package; every
Python script starts."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ["forkserver", "walredo_template", "walredo_template/pg", "walredo_tools"]


def _layout() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("\n## Layout\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def test_layout_names_every_module():
    layout = _layout()
    named = set(re.findall(r"\b([a-z_0-9]+\.py)\b", layout))
    missing = [f"{pkg}/{f.name}" for pkg in PACKAGES for f in sorted((REPO / pkg).glob("*.py"))
               if f.name != "__init__.py" and f.name not in named]
    assert not missing, f"README Layout does not mention: {missing}"


def test_layout_names_no_module_that_is_gone():
    existing = {f.name for pkg in PACKAGES for f in (REPO / pkg).glob("*.py")}
    existing |= {f.name for d in ("tests", "benchmarks", "fuzzing") for f in (REPO / d).glob("*.py")}
    stale = sorted(n for n in set(re.findall(r"\b([a-z_0-9]+\.py)\b", _layout())) if n not in existing)
    assert not stale, f"README Layout names modules that do not exist: {stale}"


def _python_scripts() -> list[str]:
    out = []
    for f in sorted((REPO / "scripts").iterdir()):
        head = f.read_bytes()[:64] if f.is_file() else b""
        # scripts/fuzz installs its extra (atheris) first; its modules are tests/test_fuzz.py's
        if head.startswith(b"#!") and b"python" in head and f.name != "fuzz":
            out.append(f.name)
    return out


@pytest.mark.parametrize("name", _python_scripts())
def test_every_python_script_starts(name):
    """Each script imports what it needs (a moved module breaks a script no test imports): --help works."""
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / name), "--help"], capture_output=True,
                          text=True, timeout=120, cwd=REPO, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage" in proc.stdout.lower() or len(proc.stdout) > 40
