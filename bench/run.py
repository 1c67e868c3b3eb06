"""celery-durable benchmark: re-measures the plain-Celery baselines and the candidate in one run.

    .venv/bin/python bench/run.py --quick                # 1 repetition, ~2 min on 2 cores
    .venv/bin/python bench/run.py                        # 3 repetitions, ~7 min idle (longer on a busy box)
    .venv/bin/python bench/run.py --snapshot HEAD        # a committed revision, not the working tree

Needs PostgreSQL (database ``durable_bench``, dropped, created and migrated here) and Redis
(dbs 13 and 14, flushed here) on 127.0.0.1; see bench/settings.py for the environment
variables. Method and latest figures: docs/benchmarks.md.
Every measurement runs a real ``celery worker -P prefork -c 2`` subprocess (under
``timeout``, killed and reaped afterwards). Repetitions are interleaved: each repetition
runs every settings group once, baseline and candidate back to back (their order
alternates), so drifting machine load hits both sides of a ratio alike. Figures are
median [min-max] over the repetitions; a ratio is the median [min-max] of the per-repetition
ratios (candidate and baseline of the same repetition). Results also go to
var/bench/results-<time>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.harness import PGID_FILE, VAR, group_pids, recreate_database  # noqa: E402

DASH = "\u2013"  # en dash, as in the docs
QUIET = 15.0  # % of the machine used by others below which a repetition counts as quiet
SIZES = {
    # name: (1-step drain N, 1-step drain N with a connection per task, 3-step drain N, serial N, warm-up)
    "quick": (400, 200, 200, 60, 10),
    "full": (1000, 300, 400, 150, 20),
}


def groups(size: str) -> list[dict]:
    n1, n1d, n3, serial, _ = SIZES[size]
    full = size == "full"
    result = [
        {
            "name": "none",
            "title": "no result backend",
            "env": {"BENCH_RESULTS": "none"},
            "pairs": [(f"drain:plain1:{n1}", f"drain:durable1:{n1}")],
        },
        {
            "name": "dcr",
            "title": "django-celery-results, CELERY_DB_REUSE_MAX set",
            "env": {"BENCH_RESULTS": "django-db", "BENCH_DB_REUSE": "1"},
            "pairs": [
                (f"drain:plain1:{n1}", f"drain:durable1:{n1}"),
                (f"drain:chain3:{n3}", f"drain:durable3:{n3}"),
                (f"serial:chain3:{serial}", f"serial:durable3:{serial}"),
            ],
        },
        {
            "name": "rows",
            "title": "DurableResultBackend (plain tasks: django-celery-results), CELERY_DB_REUSE_MAX set",
            "env": {"BENCH_RESULTS": "rows", "BENCH_DB_REUSE": "1"},
            "pairs": [
                (f"drain:plain1:{n1}", f"drain:durable1:{n1}"),
                (f"drain:chain3:{n3}", f"drain:durable3:{n3}"),
            ],
        },
        {
            "name": "dcr-default",
            "title": "django-celery-results, Celery's default connection handling",
            "env": {"BENCH_RESULTS": "django-db"},
            "pairs": [(f"drain:plain1:{n1d}", f"drain:durable1:{n1d}")]
            + ([(f"drain:chain3:{n3 // 2}", f"drain:durable3:{n3 // 2}")] if full else []),
        },
        {
            "name": "redis",
            "title": "Redis result backend",
            "env": {"BENCH_RESULTS": "redis"},
            "pairs": [
                (f"drain:chain3:{n3}", f"drain:durable3:{n3}"),
                (f"serial:chain3:{serial}", f"serial:durable3:{serial}"),
            ],
        },
    ]
    return result


def log(message: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def run_json(cmd: list[str], env: dict[str, str], limit: int) -> dict:
    full_env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        ["timeout", "-k", "15", str(limit), *cmd],
        cwd=ROOT,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=limit + 30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}:\n{err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1])


def leftovers() -> list[int]:
    """Worker processes still alive in any process group we started (killed if found)."""
    alive = []
    pgids = [int(line) for line in PGID_FILE.read_text().split()] if PGID_FILE.exists() else []
    for pgid in pgids:
        pids = group_pids(pgid)
        if pids:
            alive.extend(pids)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
    return alive


# --- aggregation -----------------------------------------------------------------------


def med(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def fmt(values: list[float] | None, digits: int = 0) -> str:
    if not values:
        return DASH
    m, lo, hi = med(values)
    if len(values) == 1:
        return f"{m:,.{digits}f}"
    return f"{m:,.{digits}f} [{lo:,.{digits}f}{DASH}{hi:,.{digits}f}]"


class Results:
    def __init__(self) -> None:
        # (group, item) -> list of per-repetition figures
        self.items: dict[tuple[str, str], list[dict]] = {}

    def add(self, group: str, item: dict) -> None:
        self.items.setdefault((group, item["item"]), []).append(item)

    def find(self, group: str, mode: str, workload: str) -> list[dict]:
        for (g, item), reps in self.items.items():
            if g == group and item.startswith(f"{mode}:{workload}:"):
                return reps
        return []

    def values(self, group: str, mode: str, workload: str, key: str) -> list[float]:
        return [r[key] for r in self.find(group, mode, workload)]

    def cost_ratio(self, cand: tuple[str, str, str], base: tuple[str, str, str]) -> list[float]:
        """Per-repetition baseline / candidate CPU cost per item (worker + PostgreSQL backends)."""
        if cand[1] != "drain" or "default" in cand[0] or "default" in base[0]:
            return []  # serial mode has no PG figure; conn-per-task backends die before they are measured
        c = [r["worker_cpu_ms"] + r["pg_cpu_ms"] for r in self.find(*cand)]
        b = [r["worker_cpu_ms"] + r["pg_cpu_ms"] for r in self.find(*base)]
        return [y / x for x, y in zip(c, b, strict=False) if x]

    def ratio(
        self, cand: tuple[str, str, str], base: tuple[str, str, str], key: str, quiet: bool = False
    ) -> list[float]:
        """Per-repetition ratios candidate / baseline (same repetition index).

        ``quiet``: only repetitions where both sides saw less than QUIET % other load.
        """
        pairs = zip(self.find(*cand), self.find(*base), strict=False)
        return [
            c[key] / b[key]
            for c, b in pairs
            if b[key] and (not quiet or max(c["other_cpu_pct"], b["other_cpu_pct"]) < QUIET)
        ]


def versions(statements: dict) -> dict[str, str]:
    from importlib.metadata import version

    import redis

    result = {"python": platform.python_version()}
    for package in ("celery", "kombu", "billiard", "Django", "django-celery-results", "psycopg", "redis"):
        result[package] = version(package)
    result["postgresql"] = statements.get("server_version", "?")
    try:
        result["redis-server"] = redis.Redis(host="127.0.0.1").info("server")["redis_version"]
    except Exception as exc:
        result["redis-server"] = f"? ({exc})"
    result["cpus"] = str(os.cpu_count())
    result["kernel"] = platform.release()
    if os.environ.get("BENCH_SNAPSHOT_OF"):
        result["celery-durable commit"] = os.environ["BENCH_SNAPSHOT_OF"] + " (snapshot)"
        return result
    try:
        git = {"cwd": ROOT, "capture_output": True, "text": True, "timeout": 10}
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], **git)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "celery_durable"], **git)
        result["celery-durable commit"] = head.stdout.strip() + (" (celery_durable/ modified)" if dirty.stdout else "")
    except (OSError, subprocess.SubprocessError) as exc:
        result["celery-durable commit"] = f"? ({exc})"
    return result


def verdict(values: list[float], target: float, higher_is_better: bool) -> str:
    if not values:
        return "not measured"
    m = statistics.median(values)
    ok = m >= target if higher_is_better else m <= target
    return "met" if ok else "**missed**"


def report(res: Results, statements: dict, meta: dict) -> str:
    lines: list[str] = []
    w = lines.append
    w(f"celery-durable benchmark ({meta['size']}, {meta['reps']} repetitions, {meta['elapsed_min']:.1f} min)")
    w("")
    w("Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()))
    w(f"Load average before / after: {meta['load_before']} / {meta['load_after']}")
    w(f"Failed measurements: {meta['failures'] or 'none'}")
    w(f"Leftover worker processes: {meta['leftover_processes'] or 'none'}")
    w("")

    # 1. statements
    fresh, replay = statements["fresh"], statements["replay"]
    w("## 1. Statements (in-process, bench.probe3: 3 steps, PostgreSQL)")
    w("")
    w("| phase | SQL statements | writes | reads | explicit transactions | round trips |")
    w("|---|---|---|---|---|---|")
    rows = [
        ("enqueue (`.delay()`)", fresh["enqueue"]),
        ("execution start (first execution)", fresh["start"]),
        ("first new step (its checkpoint deferred)", fresh["step one"]),
        ("next new step (each of 2: the checkpoint of the step before)", fresh["step two"]),
        ("completion (with the last step's checkpoint)", fresh["finish"]),
        ("execution start (re-execution after a crash)", replay["start"]),
        ("replayed step (each of 2)", replay["step one"]),
        ("new step after replay, then the completion", replay["finish"]),
    ]
    for label, s in rows:
        w(f"| {label} | {s['statements']} | {s['writes']} | {s['reads']} | {s['transactions']} | {s['round_trips']} |")
    w("")
    for label, s in rows[:6]:
        w(f"* {label}: " + "; ".join(f"`{q[:110]}`" for q in s["sql"]))
    w("")
    for name, ok in statements["checks"].items():
        w(f"* {'PASS' if ok else 'FAIL'}: {name}")
    t = statements["timed"]
    w(
        f"* in-process, no worker: `.delay()` p50 {t['enqueue_p50_ms']:.2f} ms, one 3-step execution p50 "
        f"{t['execute_p50_ms']:.2f} ms (mean {t['execute_mean_ms']:.2f} ms) wall, over {t['n']} runs; "
        f"CPU per phase (ms/run): " + ", ".join(f"{k} {v:.2f}" for k, v in t["cpu_ms"].items())
    )
    w("")

    # 2 + 3. throughput
    w("## 2./3. Drain throughput (N enqueued first, then add_consumer; worker start-up excluded)")
    w("")
    w(
        "| settings | workload | N | enqueue /s | drain /s | worker CPU ms/item | PG CPU ms/item "
        "| machine busy % | other load % "
        "| our writes /item | DCR writes /item | PG commits /item | new PG sessions /item |"
    )
    w("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (group, item), reps in res.items.items():
        if not item.startswith("drain:"):
            continue
        _, workload, n = item.split(":")
        v = lambda key, reps=reps: [r[key] for r in reps]  # noqa: E731
        w(
            f"| {group} | {workload} | {n} | {fmt(v('enqueue_per_s'))} | {fmt(v('drain_per_s'))} "
            f"| {fmt(v('worker_cpu_ms'), 2)} | {fmt(v('pg_cpu_ms'), 2)} | {fmt(v('machine_busy_pct'))} "
            f"| {fmt(v('other_cpu_pct'))} "
            f"| {fmt(v('writes_ours'), 2)} "
            f"| {fmt(v('dcr_writes'), 2)} | {fmt(v('commits'), 2)} | {fmt(v('sessions_per_item'), 3)} |"
        )
    w("")
    w("## 3. Serial latency (submit -> AsyncResult.get() returned; DCR polled every 2 ms)")
    w("")
    w("| settings | workload | N | p50 ms | p99 ms | mean ms | worker CPU ms/item | PG CPU ms/item | other load % |")
    w("|---|---|---|---|---|---|---|---|---|")
    for (group, item), reps in res.items.items():
        if not item.startswith("serial:"):
            continue
        _, workload, n = item.split(":")
        v = lambda key, reps=reps: [r[key] for r in reps]  # noqa: E731
        w(
            f"| {group} | {workload} | {n} | {fmt(v('p50_ms'), 1)} | {fmt(v('p99_ms'), 1)} "
            f"| {fmt(v('mean_ms'), 1)} | {fmt(v('worker_cpu_ms'), 2)} | {fmt(v('pg_cpu_ms'), 2)} "
            f"| {fmt(v('other_cpu_pct'))} |"
        )
    w("")

    # ratios vs targets
    w("## Ratios vs targets (per-repetition ratios: median [min-max])")
    w("")
    w(
        "| comparison | ratio | target | verdict | CPU-cost ratio (worker+PG) "
        f"| ratio, quiet reps (other < {QUIET:.0f} %) |"
    )
    w("|---|---|---|---|---|---|")
    D = "drain"
    comparisons = [
        (
            "1-step durable / plain + DCR (reused), drain /s",
            res.ratio(("dcr", D, "durable1"), ("dcr", D, "plain1"), "drain_per_s"),
            1.0,
            True,
            res.cost_ratio(("dcr", D, "durable1"), ("dcr", D, "plain1")),
            res.ratio(("dcr", D, "durable1"), ("dcr", D, "plain1"), "drain_per_s", quiet=True),
        ),
        (
            "1-step durable, DurableResultBackend / plain + DCR (reused), drain /s",
            res.ratio(("rows", D, "durable1"), ("dcr", D, "plain1"), "drain_per_s"),
            1.0,
            True,
            res.cost_ratio(("rows", D, "durable1"), ("dcr", D, "plain1")),
            res.ratio(("rows", D, "durable1"), ("dcr", D, "plain1"), "drain_per_s", quiet=True),
        ),
        (
            "1-step durable / plain, both with DurableResultBackend (plain in DCR), drain /s",
            res.ratio(("rows", D, "durable1"), ("rows", D, "plain1"), "drain_per_s"),
            None,
            True,
            res.cost_ratio(("rows", D, "durable1"), ("rows", D, "plain1")),
            res.ratio(("rows", D, "durable1"), ("rows", D, "plain1"), "drain_per_s", quiet=True),
        ),
        (
            "3-step durable, DurableResultBackend / chain of 3 + DCR (reused), drain /s",
            res.ratio(("rows", D, "durable3"), ("dcr", D, "chain3"), "drain_per_s"),
            None,
            True,
            res.cost_ratio(("rows", D, "durable3"), ("dcr", D, "chain3")),
            res.ratio(("rows", D, "durable3"), ("dcr", D, "chain3"), "drain_per_s", quiet=True),
        ),
        (
            "1-step durable / plain, no result backend, drain /s",
            res.ratio(("none", D, "durable1"), ("none", D, "plain1"), "drain_per_s"),
            None,
            True,
            res.cost_ratio(("none", D, "durable1"), ("none", D, "plain1")),
            res.ratio(("none", D, "durable1"), ("none", D, "plain1"), "drain_per_s", quiet=True),
        ),
        (
            "1-step durable + DCR / plain, no result backend, drain /s",
            res.ratio(("dcr", D, "durable1"), ("none", D, "plain1"), "drain_per_s"),
            None,
            True,
            res.cost_ratio(("dcr", D, "durable1"), ("none", D, "plain1")),
            res.ratio(("dcr", D, "durable1"), ("none", D, "plain1"), "drain_per_s", quiet=True),
        ),
        (
            "1-step durable, result only in its run row (no backend) / plain + DCR (reused), drain /s",
            res.ratio(("none", D, "durable1"), ("dcr", D, "plain1"), "drain_per_s"),
            None,
            True,
            res.cost_ratio(("none", D, "durable1"), ("dcr", D, "plain1")),
            res.ratio(("none", D, "durable1"), ("dcr", D, "plain1"), "drain_per_s", quiet=True),
        ),
        (
            "1-step durable / plain + DCR, Celery default connections, drain /s",
            res.ratio(("dcr-default", D, "durable1"), ("dcr-default", D, "plain1"), "drain_per_s"),
            None,
            True,
            res.cost_ratio(("dcr-default", D, "durable1"), ("dcr-default", D, "plain1")),
            res.ratio(("dcr-default", D, "durable1"), ("dcr-default", D, "plain1"), "drain_per_s", quiet=True),
        ),
        (
            "3-step durable / chain of 3, DCR (reused), drain /s",
            res.ratio(("dcr", D, "durable3"), ("dcr", D, "chain3"), "drain_per_s"),
            3.0,
            True,
            res.cost_ratio(("dcr", D, "durable3"), ("dcr", D, "chain3")),
            res.ratio(("dcr", D, "durable3"), ("dcr", D, "chain3"), "drain_per_s", quiet=True),
        ),
        (
            "3-step durable / chain of 3, Redis results, drain /s",
            res.ratio(("redis", D, "durable3"), ("redis", D, "chain3"), "drain_per_s"),
            1.5,
            True,
            res.cost_ratio(("redis", D, "durable3"), ("redis", D, "chain3")),
            res.ratio(("redis", D, "durable3"), ("redis", D, "chain3"), "drain_per_s", quiet=True),
        ),
        (
            "3-step durable / chain of 3, DCR, Celery default connections, drain /s",
            res.ratio(("dcr-default", D, "durable3"), ("dcr-default", D, "chain3"), "drain_per_s"),
            None,
            True,
            res.cost_ratio(("dcr-default", D, "durable3"), ("dcr-default", D, "chain3")),
            res.ratio(("dcr-default", D, "durable3"), ("dcr-default", D, "chain3"), "drain_per_s", quiet=True),
        ),
        (
            "3-step durable / chain of 3, DCR (reused), serial p50",
            res.ratio(("dcr", "serial", "durable3"), ("dcr", "serial", "chain3"), "p50_ms"),
            0.6,
            False,
            res.cost_ratio(("dcr", "serial", "durable3"), ("dcr", "serial", "chain3")),
            res.ratio(("dcr", "serial", "durable3"), ("dcr", "serial", "chain3"), "p50_ms", quiet=True),
        ),
        (
            "3-step durable / chain of 3, Redis results, serial p50",
            res.ratio(("redis", "serial", "durable3"), ("redis", "serial", "chain3"), "p50_ms"),
            0.6,
            False,
            res.cost_ratio(("redis", "serial", "durable3"), ("redis", "serial", "chain3")),
            res.ratio(("redis", "serial", "durable3"), ("redis", "serial", "chain3"), "p50_ms", quiet=True),
        ),
    ]
    for label, values, target, higher, cost, quiet in comparisons:
        if not values:
            continue
        cost_text = fmt(cost, 2) if cost else DASH
        quiet_text = f"{fmt(quiet, 2)} (n={len(quiet)})" if quiet else DASH
        if target is None:
            w(f"| {label} | {fmt(values, 2)} | {DASH} | (reference) | {cost_text} | {quiet_text} |")
        else:
            sign = "≥" if higher else "≤"
            w(
                f"| {label} | {fmt(values, 2)} | {sign} {target} | {verdict(values, target, higher)} "
                f"| {cost_text} | {quiet_text} |"
            )
    writes = res.values("dcr", D, "durable3", "writes_ours") + res.values("redis", D, "durable3", "writes_ours")
    if writes:
        w(
            f"| writes (INSERT+UPDATE+DELETE rows, our tables) per 3-step run | {fmt(writes, 2)} | ≤ 5 (DBOS 6) "
            f"| {verdict(writes, 5, False)} | {DASH} | {DASH} |"
        )
    for label, group in (("Redis results", "redis"), ("DCR results", "dcr")):
        commits = res.values(group, D, "durable3", "commits")
        if commits:
            w(
                f"| PG commits per 3-step run, {label} (incl. read-only) | {fmt(commits, 2)} | {DASH} | (reference) "
                f"| {DASH} | {DASH} |"
            )
    for label, group, workload in (
        ("new PG sessions per task, plain + DCR, Celery default", "dcr-default", "plain1"),
        ("new PG sessions per task, durable 1-step + DCR, Celery default", "dcr-default", "durable1"),
        ("new PG sessions per task, durable 1-step + DCR, DB_REUSE_MAX", "dcr", "durable1"),
    ):
        values = res.values(group, D, workload, "sessions_per_item")
        if values:
            w(f"| {label} | {fmt(values, 3)} | durable ≈ 0 | (reference) | {DASH} | {DASH} |")
    w("")
    return "\n".join(lines)


# --- main ------------------------------------------------------------------------------


def run_snapshot(rev: str, argv: list[str]) -> int:
    """Export celery_durable/ at ``rev`` next to a copy of bench/, then run bench/run.py from there."""
    import shutil

    commit = subprocess.run(
        ["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
    ).stdout.strip()
    target = VAR / f"src-{commit}"
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit, "celery_durable"],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True, timeout=60)
    shutil.copytree(ROOT / "bench", target / "bench", ignore=shutil.ignore_patterns("__pycache__"))
    rest = [a for i, a in enumerate(argv) if a != "--snapshot" and not (i and argv[i - 1] == "--snapshot")]
    rest = [a for a in rest if not a.startswith("--snapshot=")]
    log(f"snapshot of {commit} in {target}")
    env = {**os.environ, "BENCH_SNAPSHOT_OF": commit}
    return subprocess.call(
        ["timeout", "-k", "30", "7200", sys.executable, str(target / "bench" / "run.py"), *rest], env=env, cwd=target
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller N, one repetition (~2 min)")
    parser.add_argument("--reps", type=int, help="repetitions (default: 3, or 1 with --quick)")
    parser.add_argument(
        "--only", action="append", help="run only these settings groups (none, dcr, rows, dcr-default, redis)"
    )
    parser.add_argument(
        "--snapshot",
        metavar="REV",
        help="benchmark celery_durable/ as of this git revision (exported with git archive to var/bench/src-REV, "
        "with this bench/), not the working tree that others may be editing",
    )
    parser.add_argument(
        "--pg-prepared",
        action="store_true",
        help="PostgreSQL parameters bound on the server and repeated statements prepared (every group)",
    )
    args = parser.parse_args(argv)
    if args.pg_prepared:
        os.environ["BENCH_PG_SERVER_BINDING"] = "1"  # inherited by every subprocess (bench/settings.py)
    if args.snapshot:
        return run_snapshot(args.snapshot, argv if argv is not None else sys.argv[1:])
    size = "quick" if args.quick else "full"
    if args.reps is None:
        args.reps = 1 if args.quick else 3
    warmup = SIZES[size][4]
    VAR.mkdir(parents=True, exist_ok=True)
    PGID_FILE.write_text("")
    python = sys.executable
    started = time.monotonic()
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    log(f"celery_durable from {ROOT / 'celery_durable'}; recreating the bench database")
    recreate_database()

    log("statements per step (in-process)")
    statements = run_json([python, "-m", "bench.statements", "--timed", "200"], {}, 300)

    res = Results()
    raw: list[dict] = []
    failures: list[str] = []
    selected = [g for g in groups(size) if not args.only or g["name"] in args.only]
    try:
        for rep in range(args.reps):
            for group in selected:
                items = []
                for base, cand in group["pairs"]:
                    items.extend([base, cand] if rep % 2 == 0 else [cand, base])
                log(f"rep {rep + 1}/{args.reps} group {group['name']}: {' '.join(items)}")
                cmd = [python, "-m", "bench.drive", "--label", f"{group['name']}-{rep}", "--warmup", str(warmup)]
                for item in items:
                    cmd += ["--item", item]
                try:
                    out = run_json(cmd, group["env"], 900)
                except Exception as exc:
                    log(f"  FAILED: {exc}")
                    failures.append(f"rep {rep + 1} group {group['name']}: {str(exc).strip().splitlines()[-1]}")
                    continue
                for item in out["items"]:
                    res.add(group["name"], item)
                    if item["mode"] == "drain":
                        log(
                            f"  {item['item']}: {item['drain_per_s']:.0f}/s, writes {item['writes_ours']:.2f}, "
                            f"commits {item['commits']:.2f}, sessions {item['sessions']}, exit {item['worker_exit']}"
                        )
                    else:
                        log(f"  {item['item']}: p50 {item['p50_ms']:.1f} ms, exit {item['worker_exit']}")
                raw.append({"rep": rep, "group": group["name"], **out})
    finally:
        left = leftovers()
        if left:
            log(f"WARNING: killed leftover worker processes {left}")
    meta = {
        "size": size,
        "reps": args.reps,
        "elapsed_min": (time.monotonic() - started) / 60,
        "versions": versions(statements),
        "load_before": load_before,
        "load_after": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "failures": failures,
        "leftover_processes": left,
    }
    text = report(res, statements, meta)
    sys.stdout.write(text + "\n")
    path = VAR / f"results-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"meta": meta, "statements": statements, "runs": raw}, indent=1))
    log(f"raw results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
