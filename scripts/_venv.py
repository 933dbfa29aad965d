"""Run a script of this directory under the project's ``.venv``, setting it up first on a fresh machine.

Every Python script here starts with ``import _venv; REPO = _venv.ensure()``: outside the venv it runs
``scripts/setup-env`` (idempotent: a stamp per extras set; apt PostgreSQL 15 and libseccomp where missing,
the venv, the project with its extras) and re-executes the script with the venv's interpreter; inside it,
it puts the checkout on ``sys.path`` and returns its path.
"""

from __future__ import annotations

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ensure(extras: str = "test") -> str:
    venv = os.path.join(REPO, ".venv")
    if os.path.realpath(sys.prefix) != os.path.realpath(venv):
        subprocess.run(["bash", "-c", "source scripts/setup-env"], cwd=REPO,
                       env={**os.environ, "SETUP_EXTRAS": os.environ.get("SETUP_EXTRAS", extras)}, check=True)
        python = os.path.join(venv, "bin", "python")
        os.execv(python, [python, *sys.argv])
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    return REPO
