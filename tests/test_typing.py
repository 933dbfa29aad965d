"""What a type checker sees of the public API: a user script checked by ``mypy --strict`` in a subprocess.

``forkserver/__init__.py`` resolves its exports lazily at run time (``__getattr__``) and imports them under
``TYPE_CHECKING`` for type checkers; this checks the second half: the names are the real classes, not
``Any``, their methods have their declared types, and a wrong call is an error. mypy reads the working
tree (``MYPYPATH``: the editable install's import hook is invisible to it) and reports errors in the user
script only (``--follow-imports=silent``), so this tests the public types, not the package's own strictness
(``scripts/test`` runs mypy on the package).
"""

import os
import re
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (expression, the type mypy must reveal for it), each revealed on its own line of the script. "-> T": a
# callable (a class: its constructor) returning T. Compared without the "builtins." prefix, which mypy
# versions print or not.
REVEALS = [
    ("WalRedoManager", "-> forkserver.manager.WalRedoManager"),
    ("forkserver.WalRedoManager", "-> forkserver.manager.WalRedoManager"),
    ("manager", "forkserver.manager.WalRedoManager"),
    ("await manager.ping(TENANT)", "None"),
    ("await manager.request_redo(TENANT, BufferTag(1663, 5, 16384, 0, 0), 0x1000000, None, [])", "bytes"),
    ("manager.processes()", "dict[str, forkserver.tenants.ProcessInfo]"),
    ("manager.template", "forkserver.client.TemplateClient"),
    ("await manager.template.spawn(TENANT)", "forkserver.handle.ChildHandle"),
    ("await forkserver.TemplateClient.launch()", "forkserver.client.TemplateClient"),
    ("forkserver.WalRedoProcess", "-> forkserver.process.WalRedoProcess"),
    ("cell", "forkserver.oncecell.OnceCell[int]"),
    ("await cell.get_or_init(make)", "int"),
    ("BufferTag(1663, 5, 16384, 0, 0).blknum", "int"),
    ("RedoFailed('x', 'y')", "forkserver.errors.RedoFailed"),
]

# (call, the error code mypy must report for it): wrong calls must not type-check.
WRONG = [
    ("await manager.ping(42)", "arg-type"),
    ("await manager.request_redo(TENANT, BufferTag(1663, 5, 16384, 0, 0), 0, None)", "call-arg"),
    ("WalRedoManager(retries='2')", "arg-type"),
]


def _script() -> tuple[str, dict[int, str], dict[int, str]]:
    head = textwrap.dedent("""\
        import forkserver
        from forkserver import BufferTag, OnceCell, RedoFailed, WalRedoManager

        TENANT = "0123456789abcdef0123456789abcdef"


        async def make() -> int:
            return 1


        async def user(manager: WalRedoManager, cell: OnceCell[int]) -> None:
        """)
    lines = head.splitlines()
    reveals: dict[int, str] = {}
    wrong: dict[int, str] = {}
    for expr, want in REVEALS:
        lines.append(f"    reveal_type({expr})")
        reveals[len(lines)] = want
    for call, code in WRONG:
        lines.append(f"    {call}")
        wrong[len(lines)] = code
    return "\n".join(lines) + "\n", reveals, wrong


def test_public_names_have_their_real_types(tmp_path):
    source, reveals, wrong = _script()
    script = tmp_path / "user_script.py"
    script.write_text(source)
    config = tmp_path / "mypy.ini"  # ours only: not a user-level or the repository's configuration
    config.write_text("[mypy]\n")
    env = dict(os.environ, MYPYPATH=REPO)
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", "--no-error-summary",
         "--show-error-codes", "--hide-error-context", "--no-pretty", "--no-color-output",
         "--cache-dir", str(tmp_path / "cache"), "--config-file", str(config), script.name],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    output = proc.stdout + proc.stderr
    revealed: dict[int, str] = {}
    errors: dict[int, list[str]] = {}
    for m in re.finditer(r'^user_script\.py:(\d+): (note|error): (.*)$', proc.stdout, re.M):
        line, kind, text = int(m[1]), m[2], m[3]
        if kind == "note" and (r := re.fullmatch(r'Revealed type is "(.*)"', text)):
            revealed[line] = re.sub(r"\bbuiltins\.", "", r[1])
        elif kind == "error":
            errors.setdefault(line, []).append(text)
    for line, want in reveals.items():
        got = revealed.get(line, "")
        ok = got.startswith("def (") and got.endswith(want) if want.startswith("-> ") else got == want
        assert ok, f"line {line}: {source.splitlines()[line - 1].strip()}: want {want!r}\n{output}"
    for line, code in wrong.items():
        assert any(e.endswith(f"[{code}]") for e in errors.get(line, [])), (
            f"line {line} should be a [{code}] error: {source.splitlines()[line - 1].strip()}\n{output}")
    assert set(errors) == set(wrong), f"unexpected errors:\n{output}"
    assert proc.returncode == 1, output  # errors found (the wrong calls), nothing worse (2 = mypy crashed)
