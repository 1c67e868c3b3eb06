"""Overhead of OBSERVE_PLAIN_TASKS: plain 1-task drains with observing off and on, interleaved.

    .venv/bin/python -m bench.observe [--tasks 2000] [--reps 3]

Each repetition starts a real prefork worker (-c 2, Redis broker, PostgreSQL, results in
django-celery-results) once per mode, in alternating order, and drains the same number of
``bench.one`` tasks (see bench/drive.py). Prints the medians and the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys

from bench.run import ROOT, log, run_json

# off: Celery's default (a new database session per task); off+reuse: connections kept by
# Celery's own CELERY_DB_REUSE_MAX; on: observed (which keeps connections like durable tasks).
MODES = {
    "off": {"BENCH_OBSERVE": "0", "BENCH_DB_REUSE": "0"},
    "off+reuse": {"BENCH_OBSERVE": "0", "BENCH_DB_REUSE": "1"},
    "on": {"BENCH_OBSERVE": "1", "BENCH_DB_REUSE": "0"},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    python = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv").exists() else sys.executable
    figures: dict[str, list[dict]] = {mode: [] for mode in MODES}
    for rep in range(args.reps):
        for mode in list(MODES) if rep % 2 == 0 else list(reversed(MODES)):
            cmd = [
                python,
                "-m",
                "bench.drive",
                "--label",
                f"observe-{mode}-{rep}",
                "--item",
                f"drain:plain1:{args.tasks}",
            ]
            item = run_json(cmd, {**MODES[mode], "BENCH_RESULTS": "django-db"}, 900)
            drained = item["items"][0]
            figures[mode].append(drained)
            log(
                f"rep {rep + 1} observe {mode}: {drained['drain_per_s']:.0f} tasks/s, "
                f"commits {drained['commits']:.2f}, sessions {drained['sessions']}"
            )
    print(f"{'mode':14} {'tasks/s (median)':>17} {'commits/task':>13} {'sessions/task':>14} {'writes (ours)/task':>19}")
    medians = {}
    for mode, items in figures.items():
        medians[mode] = statistics.median(i["drain_per_s"] for i in items)
        commits = statistics.median(i["commits"] for i in items)
        writes = statistics.median(i["writes_ours"] for i in items)
        sessions = statistics.median(i["sessions"] / args.tasks for i in items)
        print(f"{mode:14} {medians[mode]:>17.0f} {commits:>13.2f} {sessions:>14.2f} {writes:>19.2f}")
    print(f"observing on / off (Celery's default connections): {medians['on'] / medians['off']:.2f}x")
    kept = medians["on"] / medians["off+reuse"]
    print(f"observing on / off with connections kept (CELERY_DB_REUSE_MAX): {kept:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
