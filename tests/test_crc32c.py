"""walredo_template.pg.crc32c: the native function loaded without the package's ``__init__``, the fallback."""

import os
import random
import subprocess
import sys
import textwrap

import pytest

from walredo_template.pg import crc32c as mod

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True,
                         timeout=60, check=True)
    return out.stdout.strip()


def test_native_and_pure_agree_and_continue():
    rng = random.Random(15)
    for n in (0, 1, 7, 8, 9, 63, 64, 65, 8192):
        data = rng.randbytes(n)
        assert mod.crc32c(data) == mod.crc32c_pure(data)
        cut = n // 3
        assert mod.crc32c(data[cut:], mod.crc32c(data[:cut])) == mod.crc32c_pure(data)
    assert mod.crc32c(b"123456789") == 0xE3069283


def test_the_package_init_is_not_imported():
    pytest.importorskip("crc32c")  # only meaningful where the native package is installed
    out = _run("""
        import sys
        from walredo_template.pg import crc32c
        heavy = [m for m in ("crc32c", "importlib.metadata", "argparse", "email", "zipfile") if m in sys.modules]
        print(crc32c.NATIVE, heavy)
    """)
    assert out == "True []"


def test_without_the_package_the_pure_function_is_used():
    out = _run("""
        import importlib.machinery
        finder = importlib.machinery.PathFinder
        real = finder.find_spec
        finder.find_spec = classmethod(  # the crc32c package is not installed
            lambda cls, name, path=None, target=None: None if name == "crc32c" else real(name, path, target))
        from walredo_template.pg import crc32c
        print(crc32c.NATIVE, crc32c.crc32c is crc32c.crc32c_pure, hex(crc32c.crc32c(b"123456789")))
    """)
    assert out == "False True 0xe3069283"
