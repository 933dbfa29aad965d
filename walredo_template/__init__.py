"""Code that runs inside the template process and the per-tenant walredo children.

Nothing here talks to asyncio: the template is a plain selector loop and each child is a blocking
request/response loop over its socket. The PostgreSQL 15 redo engine lives in :mod:`walredo_template.pg`
and its entry point is :func:`walredo_template.redo.apply_records`.
"""

from typing import NamedTuple


class BufferTag(NamedTuple):
    """Identifies one page of one relation fork, as PostgreSQL's ``BufferTag`` does."""

    spcnode: int
    dbnode: int
    relnode: int
    forknum: int
    blknum: int


__all__ = ["BufferTag"]
