"""Tests of the fuzz harness (``fuzzing/``, ``scripts/fuzz``) and a few seconds of each target.

Without atheris (it is an optional extra): each target replays the committed corpus
(``tests/data/fuzz-corpus/TARGET``) and then a fixed number of mutants made by the pure-Python mutator
from a fixed seed, so a run is deterministic and no timing is asserted. The violating inputs the fuzzer
found are replayed from ``tests/data/fuzz-corpus/regressions/TARGET``: those of holes still open are
``xfail(strict=True)`` (listed in ``OPEN_HOLES``, with the reason), so they flip to a failure when the
hole is fixed and the mark must go; any other regression input must pass.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fuzzing import campaign, inputs, records, targets  # noqa: E402
from fuzzing.mutate import ByteMutator  # noqa: E402
from walredo_template import BufferTag  # noqa: E402
from walredo_template.pg import page as P  # noqa: E402
from walredo_template.pg import pagecheck  # noqa: E402
from walredo_template.pg.xlogrecord import decode_record  # noqa: E402
from walredo_tools.capture import load_capture, page_requests  # noqa: E402

CORPUS = REPO / "tests" / "data" / "fuzz-corpus"
REGRESSIONS = CORPUS / "regressions"
CAPTURE = REPO / "tests" / "data" / "wal-small" / "capture.msgpack"
MUTANTS = {"control": 3000, "child": 2000, "record": 4000, "apply": 1500, "apply-valid": 1500}

# Holes the fuzzer found that are not fixed yet: regression input -> why it fails today (strict xfail). The
# four inputs it found first (base images with line pointers off the page, CRC-valid full-page images with bad
# bounds or pointers, in heap, GIN and GiST records) pass since apply_records validates every page it returns.
OPEN_HOLES: dict[str, str] = {}

# Targets whose bounded random run still hits an open hole (the seed is fixed: deterministic).
OPEN_IN_RANDOM_RUN: dict[str, str] = {}


@pytest.fixture(scope="module")
def capture() -> dict[str, object]:
    return load_capture(str(CAPTURE))


def _corpus(name: str) -> list[bytes]:
    d = CORPUS / targets.TARGETS[name].corpus if name in targets.TARGETS else CORPUS / name
    return [p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()]


# ------------------------------------------------------------------------------------- the harness


def test_finish_record_is_recordbuilders() -> None:
    import recordbuilder

    raw = bytes(range(256)) * 3
    assert records.finish_record(raw) == recordbuilder.finish_record(raw)


def test_encode_record_is_the_inverse_of_decode(capture: dict[str, list[list[object]]]) -> None:
    """Byte for byte on every record PostgreSQL wrote (the mutators rely on it)."""
    for _start, _end, raw in capture["records"]:
        assert isinstance(raw, bytes)
        assert records.encode_record(decode_record(raw)) == raw


def test_strip_check_images_keeps_what_redo_reads(capture: dict[str, list[list[object]]]) -> None:
    for _start, _end, raw in capture["records"][:500]:
        assert isinstance(raw, bytes)
        rec, stripped = decode_record(raw), decode_record(records.strip_check_images(raw))
        assert (stripped.rmid, stripped.info, stripped.main_data) == (rec.rmid, rec.info, rec.main_data)
        for k, b in rec.blocks.items():
            assert stripped.blocks[k] == records.without_check_images(b)
            assert not (stripped.blocks[k].has_image and not stripped.blocks[k].apply_image)


def test_page_checker_accepts_every_page_postgresql_wrote(capture: dict[str, object]) -> None:
    """Every consistency image and every page on disk of the capture (heap, VM and every index kind) is
    valid for the checker: it flags nothing PostgreSQL itself produces."""
    kinds = set()
    for req in page_requests(capture):
        assert pagecheck.page_problem(req.expected, req.tag.forknum, req.rmgr) is None, (req.tag, req.source)
        kinds.add(pagecheck.page_kind(req.expected, req.tag.forknum, req.rmgr)[0])
    assert {"heap", "vm", "btree", "btree-meta", "hash", "hash-meta", "hash-bitmap", "gin-entry",
            "gin-meta", "gist", "sequence", "spgist", "brin", "bloom"} <= kinds


def _heap_page() -> bytearray:
    page = bytearray(P.BLCKSZ)
    P.page_init(page)
    P.add_item(page, b"x" * 40, 1)
    return page


def test_page_checker_flags_line_pointers_outside_the_tuple_space() -> None:
    page = _heap_page()
    assert pagecheck.page_problem(bytes(page), 0, 10) is None
    P.set_itemid(page, 1, 20480, P.LP_NORMAL, 30)
    problem = pagecheck.page_problem(bytes(page), 0, 10)
    assert problem is not None and problem.startswith("line-pointer: heap page item 1 at 20480 length 30")
    P.set_itemid(page, 1, 100, P.LP_DEAD, 30)  # inside the page but below pd_upper: not tuple space
    assert pagecheck.page_problem(bytes(page), 0, 10) is not None
    P.set_itemid(page, 1, 0, P.LP_REDIRECT, 0)  # no storage: nothing to check
    assert pagecheck.page_problem(bytes(page), 0, 10) is None


def test_page_checker_leaves_pd_lower_of_metapages_alone() -> None:
    """A btree metapage's pd_lower ends its metadata, not a line pointer array."""
    page = bytearray(P.BLCKSZ)
    P.page_init(page, 16)
    page[12:14] = (24 + 40).to_bytes(2, "little")
    page[24:64] = b"\xff" * 40  # would be line pointers far off the page
    page[8192 - 16 + 12] = pagecheck.BTP_META
    assert pagecheck.page_kind(bytes(page), 0, 11) == ("btree-meta", False)
    assert pagecheck.page_problem(bytes(page), 0, 11) is None
    page[8192 - 16 + 12] = 1  # BTP_LEAF: now they are line pointers
    assert pagecheck.page_problem(bytes(page), 0, 11) is not None


def test_page_checker_header_and_size() -> None:
    assert pagecheck.page_problem(bytes(P.BLCKSZ), 0, 10) is None  # a new page
    assert pagecheck.page_problem(bytes(100), 0, 10) == "size: page has 100 bytes"
    page = _heap_page()
    page[14:16] = (8200).to_bytes(2, "little")
    assert (pagecheck.page_problem(bytes(page), 0, 10) or "").startswith("header: corrupted page pointers")


def test_apply_input_roundtrip(capture: dict[str, object]) -> None:
    seeds = inputs.apply_seeds(capture, per_key=1)
    assert len(seeds) > 50
    for inp in seeds:
        again = inputs.decode_apply(inputs.encode_apply(inp))
        assert again == inp
    assert inputs.decode_apply(b"\x93garbage") is None


def test_seeds_cover_every_access_method(capture: dict[str, object]) -> None:
    rmgrs = {inputs.decode_apply(d).rmgr for d in _corpus("apply")}  # type: ignore[union-attr]
    assert {9, 10, 11, 12, 13, 14, 15, 16, 17, 20} <= rmgrs
    rmids = {decode_record(d[1:], verify_crc=False).rmid for d in _corpus("record")}
    assert {0, 9, 10, 11, 12, 13, 14, 15, 16, 17, 20} <= rmids


def test_apply_violations_are_classified(monkeypatch: pytest.MonkeyPatch) -> None:
    """The harness, not the engine: a stand-in apply_records that returns the base page with a line pointer
    off the page is an ``invalid-page/line-pointer/base`` violation; one that raises KeyError is
    signed by the exception type."""
    tag = BufferTag(1663, 5, 16384, 0, 0)
    page = _heap_page()
    P.set_itemid(page, 1, 20480, P.LP_NORMAL, 30)
    data = inputs.encode_apply(inputs.ApplyInput(tag, 10, False, bytes(page), []))
    monkeypatch.setattr(targets, "apply_records", lambda tag, base, recs, wal_log_hints: base)
    with pytest.raises(targets.Violation) as e:
        targets.run_apply(data)
    assert e.value.signature == "invalid-page/line-pointer/base"

    def broken(*args: object, **kwargs: object) -> bytes:
        raise KeyError("x")

    monkeypatch.setattr(targets, "apply_records", broken)
    with pytest.raises(targets.Violation) as e:
        targets.run_apply(data)
    assert e.value.signature.startswith("KeyError@tests/test_fuzz.py:")


# -------------------------------------------------------------------------------------- the targets


@pytest.mark.parametrize("name", sorted(targets.TARGETS))
def test_committed_corpus_replays(name: str) -> None:
    corpus = _corpus(name)
    assert corpus, f"no committed corpus for {name}: scripts/fuzz --write-seeds"
    for data in corpus:
        targets.TARGETS[name].run(data)


@pytest.mark.parametrize("name", sorted(targets.TARGETS))
def test_bounded_random_mutations(name: str, request: pytest.FixtureRequest) -> None:
    """MUTANTS[name] mutants of the committed corpus (fixed seed): no violation."""
    if name in OPEN_IN_RANDOM_RUN:
        request.applymarker(pytest.mark.xfail(strict=True, reason=OPEN_IN_RANDOM_RUN[name]))
    target = targets.TARGETS[name]
    rng = random.Random(12)
    mutate = ByteMutator(rng)
    corpus = _corpus(name)
    found: dict[str, str] = {}
    for _ in range(MUTANTS[name]):
        data = rng.choice(corpus)
        for _ in range(1 + rng.randrange(3)):
            data = target.mutate(data, target.max_len, mutate, rng) if target.mutate else mutate(data, target.max_len)
        try:
            target.run(data)
        except targets.Violation as v:
            found.setdefault(v.signature, v.detail)
    assert not found, "\n\n".join(f"{k}:\n{v}" for k, v in found.items())


def _regressions() -> list[object]:
    out: list[object] = []
    for tdir in sorted(REGRESSIONS.iterdir()) if REGRESSIONS.is_dir() else []:
        for f in sorted(tdir.glob("*.bin")):
            key = f"{tdir.name}/{f.name}"
            marks = [pytest.mark.xfail(strict=True, reason=OPEN_HOLES[key])] if key in OPEN_HOLES else []
            out.append(pytest.param(tdir.name, f, id=key, marks=marks))
    return out


@pytest.mark.parametrize(("name", "path"), _regressions())
def test_regression_input(name: str, path: Path) -> None:
    targets.TARGETS[name].run(path.read_bytes())


def test_open_holes_have_inputs() -> None:
    for key in OPEN_HOLES:
        assert (REGRESSIONS / key).is_file(), key


# ---------------------------------------------------------------------------------------- the script


def test_worker_random_engine(tmp_path: Path) -> None:
    """The pure-Python engine (no atheris) for one second: it runs, counts and writes its stats."""
    proc = subprocess.run([sys.executable, "-m", "fuzzing.worker", "record", "--workdir", str(tmp_path),
                           "--engine", "random", "--seconds", "1", "--seed-dir", str(CORPUS / "record")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    import json

    stats = json.loads((tmp_path / "stats" / "record.json").read_text())
    assert stats["execs"] > len(_corpus("record")) and stats["violations"] == 0


def _has_atheris() -> bool:
    try:
        import atheris  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _has_atheris(), reason="atheris (extra: fuzz) is not installed; scripts/fuzz installs it")
def test_script_runs_within_its_budget(tmp_path: Path) -> None:
    """scripts/fuzz on one target for 12 s (start-up, ~5 s of instrumenting, included): a table, exit 0,
    and no worker left behind."""
    t0 = time.monotonic()
    # Under this interpreter (the venv's, with atheris): the script's set-up step is not re-run.
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "fuzz"), "--target", "control", "--seconds", "12",
                           "--workdir", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "control" in proc.stdout and "executions" in proc.stdout
    assert elapsed < 90  # a sanity bound on a hung worker, not a timing assertion
    left = subprocess.run(["pgrep", "-f", f"fuzzing.worker control --workdir {tmp_path}"], capture_output=True)
    assert left.returncode == 1, left.stdout
    assert os.listdir(tmp_path / "corpus" / "control")


def test_table_format() -> None:
    r = campaign.Result("apply", 2.0, 1000, 12, {"invalid-page/x": 3}, [], 0)
    text = campaign.table([r])
    assert "apply" in text and "1,000" in text and "500" in text and text.splitlines()[0].startswith("target")
