"""Harness-side tools: reading a PostgreSQL 15 ``pg_wal`` directory and loading committed WAL captures.

Used by the tests, scripts, benchmarks and fuzzers; nothing in ``forkserver`` or ``walredo_template`` imports
it, so no walredo child ever loads it (``tests/test_skeleton.py`` checks that).
"""
