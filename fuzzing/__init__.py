"""Coverage-guided fuzzing of the wire decoders and the redo engine (``scripts/fuzz``).

Every target checks one invariant: **the only outcomes are a typed error or a valid result**. Anything
else (another exception, a result that breaks the target's checks, e.g. a page PostgreSQL could not read)
is a :class:`~fuzzing.targets.Violation`, saved with its input and reported.

    targets.py    the targets: control decoder, child-protocol decoder, record decoder, apply_records (and
                  apply-valid: apply_records on requests whose base page and images are valid)
    (walredo_template/pg/pagecheck.py: structural validity of a page, by page kind, which the engine enforces)
    records.py    re-encoding decoded WAL records (CRC fixed), for structure-aware mutations and seeds
    inputs.py     the apply_records target's input format, and seeds built from the committed capture
    mutate.py     mutators: a pure-Python byte mutator (tests) and the structure-aware request mutator
    worker.py     one fuzzing process for one target (atheris, or the pure-Python engine)    (child process)
    campaign.py   scripts/fuzz: runs the workers within the time budget, prints the table   (parent process)

Nothing here is imported by the engine or the fork server; it is harness code, like ``benchmarks/``.
"""
