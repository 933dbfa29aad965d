"""Benchmarks for the walredo fork server , with the baselines measured in the same run.

Each benchmark is a module with a ``main(argv)`` (``python -m benchmarks.<name>``; ``scripts/bench_<name>``
are thin entry points; ``scripts/bench_loop_stall`` runs cold_spawn, which measures both) that writes
``bench-results/<name>.json`` and ``<name>.md``. ``scripts/bench`` runs them all (:mod:`benchmarks.all`) and
adds a summary checked against the issue's goals.

Modules, by what they do:

- :mod:`benchmarks.stats` — percentiles and sample summaries;
- :mod:`benchmarks.report` — results files: JSON, Markdown tables, PNG plots (matplotlib optional);
- :mod:`benchmarks.runner` — shared command line (``--quick``, ``--out``) and the run/write wrapper;
- :mod:`benchmarks.heap` — a parent heap of N GiB with every page touched;
- :mod:`benchmarks.loopstall` — the 1 ms ticker that measures event-loop gaps;
- :mod:`benchmarks.pagefaults` — the cost of one page fault on this machine, and a process's fault count;
- :mod:`benchmarks.framed_client` — a minimal in-order pipelined asyncio client for length-prefixed frames;
- :mod:`benchmarks.closed_loop` — N concurrent clients, each sending its next request on the last reply;
- :mod:`benchmarks.echo_floor` — the raw asyncio unix-socket echo measured as the latency floor;
- :mod:`benchmarks.profiling` — py-spy attached to a benchmark process, summarised as a table;
- :mod:`benchmarks.baseline_worker` — how the baselines run the walredo worker (fresh interpreter,
  multiprocessing target, forked child) and the raw echo server;
- :mod:`benchmarks.spawn_methods` — the four ways to start a tenant child, behind one interface;
- :mod:`benchmarks.proc_memory` — USS/PSS/RSS of processes (psutil);
- :mod:`benchmarks.wal_inputs` — the ``short``/``medium`` redo inputs taken from the committed WAL capture;
- the benchmarks: :mod:`~benchmarks.cold_spawn` (with the loop stall), :mod:`~benchmarks.coalescing`,
  :mod:`~benchmarks.walredo`, :mod:`~benchmarks.memory`, :mod:`~benchmarks.scale`;
- :mod:`benchmarks.goals` — the issue's goals checked against the results;
- :mod:`benchmarks.all` — ``scripts/bench``: every benchmark in its own process, then the summary.

Every benchmark cleans up every process it starts, also on error and on Ctrl-C.
"""
