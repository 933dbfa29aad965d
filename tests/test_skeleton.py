import forkserver
import walredo_template


def test_buffer_tag_is_shared():
    assert forkserver.BufferTag is walredo_template.BufferTag
    tag = forkserver.BufferTag(1663, 5, 16384, 0, 7)
    assert tag.blknum == 7 and tag._fields[0] == "spcnode"
