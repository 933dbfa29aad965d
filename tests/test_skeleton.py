import forkserver
import walredo_template


def test_buffer_tag_is_shared():
    assert forkserver.BufferTag is walredo_template.BufferTag
    tag = forkserver.BufferTag(1663, 5, 16384, 0, 7)
    assert tag.blknum == 7 and tag._fields[0] == "spcnode"


def test_runtime_never_imports_the_harness():
    """What a walredo child loads (the worker, the engine, the fork server) leaves walredo_tools out."""
    import subprocess
    import sys

    code = (
        "import sys, forkserver, forkserver.child, walredo_template.worker, walredo_template.redo\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'walredo_tools'))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"
