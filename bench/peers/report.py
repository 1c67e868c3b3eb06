"""The markdown report of bench/peers (as pasted into docs/benchmarks.md).

Figures are the median [min-max] over the repetitions of the invocation; a ratio is the
median [min-max] of per-repetition ratios, both sides measured in the same repetition.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Callable
from typing import Any

DASH = "\u2013"
RESULTS_LABEL = {"rows-redis": "read from the run rows (DurableResultBackend)", "redis": "in Redis"}


def results_mode() -> str:
    """The workflow's result backends (``bench.peers --results``)."""
    return os.environ.get("BENCH_PEERS_RESULTS", "rows-redis")


X = "\u00d7"  # multiplication sign


def fmt(values: list[float], digits: int = 0) -> str:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return DASH
    m = statistics.median(values)
    if len(values) == 1:
        return f"{m:,.{digits}f}"
    return f"{m:,.{digits}f} [{min(values):,.{digits}f}{DASH}{max(values):,.{digits}f}]"


class Reps:
    """Values of one figure across the repetitions (a repetition lacking it is skipped)."""

    def __init__(self, results: dict[str, Any]) -> None:
        self.reps = results["reps"]

    def get(self, fn: Callable[[dict], float]) -> list[float]:
        out = []
        for rep in self.reps:
            try:
                out.append(float(fn(rep)))
            except (KeyError, TypeError, ZeroDivisionError):
                continue
        return out


def verdict(values: list[float], target: float, higher: bool = True) -> str:
    if not values:
        return "not measured"
    m = statistics.median(values)
    return "met" if (m >= target if higher else m <= target) else "**missed**"


def ours_statements(st: dict) -> tuple[int, int, int]:
    """(SQL statements, round trips, write statements) of one fresh 3-step run, from bench/statements.py."""
    phases = ("enqueue", "start", "step one", "step two", "step three", "finish")
    fresh = st["fresh"]
    return (
        sum(fresh[p]["statements"] for p in phases),
        sum(fresh[p]["round_trips"] for p in phases),
        sum(fresh[p]["writes"] for p in phases),
    )


def report(r: dict[str, Any]) -> str:
    lines: list[str] = []
    w = lines.append
    reps = Reps(r)
    v = r["versions"]
    w(f"Command: `{r['command']}` ({len(r['reps'])} repetition(s), {r.get('elapsed_min', 0):.1f} min)")
    w("")
    w("Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()))
    w("")
    w(f"`uptime` before: {r['uptime_before']}; after: {r.get('uptime_after', '?')}")
    w(f"Failures: {'; '.join(r['failures']) or 'none'}")
    flow_left = reps.get(lambda x: len(x["concurrency"]["flow"]["leftover_processes"]))
    w(
        f"Leftover worker processes: {r.get('leftover_processes') or 'none'}"
        + (f" (flow phases: {int(sum(flow_left))})" if flow_left else "")
    )
    w("")
    rows: list[tuple[str, list[float], tuple[str, float] | None]] = []  # label, ratios, target

    # --- workload 1 ---
    wf = lambda path: lambda x: path(x["workflow"])  # noqa: E731
    drain_ours = reps.get(wf(lambda x: x["celery"]["drain:durable3"]["drain_per_s"]))
    if drain_ours:
        w("### 1. A 3-step workflow (trivial steps)")
        w("")
        w("| system | how | runs/s | p50 ms | p99 ms | writes /run | commits /run | SQL statements /run | CPU ms/run |")
        w("|---|---|---|---|---|---|---|---|---|")
        st = r["reps"][0]["workflow"].get("statements")
        stmts = ours_statements(st) if st else None
        c = lambda key, f: reps.get(wf(lambda x: x["celery"][key][f]))  # noqa: E731
        d = lambda key, f: reps.get(wf(lambda x: x["dbos"][key][f]))  # noqa: E731
        e2e = reps.get(
            wf(
                lambda x: (
                    1
                    / (
                        1 / x["celery"]["drain:durable3"]["enqueue_per_s"]
                        + 1 / x["celery"]["drain:durable3"]["drain_per_s"]
                    )
                )
            )
        )
        sql = f"{stmts[0]} ({stmts[2]} writes, {stmts[1]} round trips)" if stmts else DASH
        w(
            f"| celery-durable | backlog drained by prefork -c 2, results {RESULTS_LABEL[results_mode()]} "
            f"| {fmt(drain_ours)} "
            f"| {fmt(c('serial:durable3', 'p50_ms'), 1)} "
            f"| {fmt(c('serial:durable3', 'p99_ms'), 1)} | {fmt(c('drain:durable3', 'writes_ours'), 2)} "
            f"| {fmt(c('drain:durable3', 'commits'), 2)} | {sql} "
            f"| worker {fmt(c('drain:durable3', 'worker_cpu_ms'), 1)} + PG {fmt(c('drain:durable3', 'pg_cpu_ms'), 1)} |"
        )
        w(f"| celery-durable | `.delay()` N runs, then the drain (end to end) | {fmt(e2e)} | | | | | | |")
        w(
            "| Celery chain of 3 | backlog drained by prefork -c 2, Redis results "
            f"| {fmt(c('drain:chain3', 'drain_per_s'))} "
            f"| {fmt(c('serial:chain3', 'p50_ms'), 1)} | {fmt(c('serial:chain3', 'p99_ms'), 1)} | 0 (Redis) "
            f"| {fmt(c('drain:chain3', 'commits'), 2)} | 0 | worker {fmt(c('drain:chain3', 'worker_cpu_ms'), 1)} |"
        )
        ds = r["reps"][0]["workflow"].get("dbos", {}).get("serial", {}).get("statements")
        dsql = (
            f"{ds['statements']:.0f} ({ds['write_statements']:.0f} writes, {ds['commits']:.0f} commits)" if ds else DASH
        )
        w(
            f"| DBOS | called directly, 2 processes | {fmt(d('direct2', 'rate_per_s'))} "
            f"| {fmt(d('serial', 'p50_ms'), 1)} "
            f"| {fmt(d('serial', 'p99_ms'), 1)} | {fmt(d('direct2', 'writes_per_run'), 2)} "
            f"| {fmt(d('direct2', 'commits_per_run'), 2)} | {dsql} | process {fmt(d('direct2', 'cpu_ms_per_run'), 1)} |"
        )
        w(
            f"| DBOS | called directly, 1 process | {fmt(d('serial', 'rate_per_s'))} | | | | | | "
            f"process {fmt(d('serial', 'cpu_ms_per_run'), 1)} + PG {fmt(d('serial', 'pg_cpu_ms_per_run'), 1)} |"
        )
        w(
            f"| DBOS | queue backlog drained by 2 processes (defaults: 1 s polling, no limit) "
            f"| {fmt(d('queue', 'rate_per_s'))} | | | | | | |"
        )
        w("")
        w(
            "Other processes' share of the machine (%): celery-durable drain "
            f"{fmt(c('drain:durable3', 'other_cpu_pct'))}, "
            f"chain drain {fmt(c('drain:chain3', 'other_cpu_pct'))}; whole machine busy during DBOS direct x2: "
            f"{fmt(d('direct2', 'machine_busy_pct'))}. Writes: INSERT+UPDATE+DELETE rows of the system's own tables "
            "(pg_stat_user_tables); commits: pg_stat_database.xact_commit of its database, read-only and background "
            "transactions included; SQL statements counted in-process."
        )
        w("")
        dbos2 = lambda x: x["workflow"]["dbos"]["direct2"]["rate_per_s"]  # noqa: E731
        ours = lambda x: x["workflow"]["celery"]["drain:durable3"]  # noqa: E731
        rows.append(
            (
                "3-step throughput: celery-durable drain ÷ DBOS direct (2 processes)",
                reps.get(lambda x: ours(x)["drain_per_s"] / dbos2(x)),
                (">=", 3.0),
            )
        )
        rows.append(
            (
                "3-step throughput: celery-durable end to end (`.delay()` + drain) ÷ DBOS direct (2 processes)",
                reps.get(lambda x: 1 / (1 / ours(x)["enqueue_per_s"] + 1 / ours(x)["drain_per_s"]) / dbos2(x)),
                (">=", 2.0),  # issue 14: >= 2x DBOS with .delay() included
            )
        )
        rows.append(
            (
                "3-step throughput: celery-durable drain ÷ DBOS direct, 1 process (the anchors' ~115/s set-up)",
                reps.get(lambda x: ours(x)["drain_per_s"] / x["workflow"]["dbos"]["serial"]["rate_per_s"]),
                None,
            )
        )
        rows.append(
            (
                "3-step throughput: celery-durable drain ÷ DBOS queue drain (2 processes)",
                reps.get(lambda x: ours(x)["drain_per_s"] / x["workflow"]["dbos"]["queue"]["rate_per_s"]),
                None,
            )
        )
        rows.append(
            (
                "3-step throughput: celery-durable drain ÷ Celery chain drain",
                reps.get(lambda x: ours(x)["drain_per_s"] / x["workflow"]["celery"]["drain:chain3"]["drain_per_s"]),
                (">", 1.0),
            )
        )
        rows.append(
            (
                "CPU per 3-step run: DBOS (process + PG, 1 process) ÷ celery-durable (worker + PG + Redis, drain; "
                "`.delay()` not included)",
                reps.get(
                    lambda x: (
                        (
                            x["workflow"]["dbos"]["serial"]["cpu_ms_per_run"]
                            + x["workflow"]["dbos"]["serial"]["pg_cpu_ms_per_run"]
                        )
                        / (ours(x)["worker_cpu_ms"] + ours(x)["pg_cpu_ms"] + ours(x)["redis_cpu_ms"])
                    )
                ),
                None,
            )
        )
        p50 = lambda x: x["workflow"]["celery"]["serial:durable3"]["p50_ms"]  # noqa: E731
        rows.append(
            (
                "3-step p50 latency: DBOS direct ÷ celery-durable (> 1: we are faster)",
                reps.get(lambda x: x["workflow"]["dbos"]["serial"]["p50_ms"] / p50(x)),
                None,
            )
        )
        rows.append(
            (
                "3-step p50 latency: Celery chain ÷ celery-durable",
                reps.get(lambda x: x["workflow"]["celery"]["serial:chain3"]["p50_ms"] / p50(x)),
                (">", 1.0),
            )
        )
        rows.append(
            (
                "writes per run: celery-durable ÷ DBOS (< 1: fewer)",
                reps.get(lambda x: ours(x)["writes_ours"] / x["workflow"]["dbos"]["direct2"]["writes_per_run"]),
                ("<", 1.0),
            )
        )

    # --- workload 2 ---
    conc = [x["concurrency"] for x in r["reps"] if "concurrency" in x]
    if conc:
        k = conc[0]
        flow = k["flow"]
        w("### 2. Per-key concurrency: one key, limit 5, a backlog enqueued first")
        w("")
        w("| system | body, pool | runs | drain runs/s | hand-off p50 / p99 ms | notes |")
        w("|---|---|---|---|---|---|")
        lim, hand = flow["limited"], flow["handoff"]
        pool = hand.get("pool", 6)  # the 10 ms drains' pool (before issue 14's -c 8: 6)
        w(
            f"| celery-durable `Concurrency(limit=5)` | trivial, prefork -c 2 | {lim['n']:,} "
            f"| {lim['rate_per_s']:,.0f} "
            f"| {lim.get('handoff_p50_ms', 0):.1f} / {lim.get('handoff_p99_ms', 0):.1f} | worker CPU "
            f"{lim['worker_cpu_ms_per_run']:.1f} ms/run |"
        )
        lk = k.get("lock")
        if lk:
            w(
                f"| Celery + Redis `SET NX EX` locks, `retry(countdown=1)` | trivial, prefork -c 2 | {lk['n']:,} "
                f"| {lk['rate_per_s']:,.0f} | {DASH} | {lk['misses']:,} lock misses, at most {lk['peak_running']} "
                f"running; worker CPU {lk['worker_cpu_ms_per_run']:.1f} ms/run |"
            )
        for label in ("default", "fast"):
            dd = flow["dbos"][label]
            w(
                f"| DBOS partitioned queue, `partition_concurrency=5`, polling {dd['polling_s']:g} s "
                "| trivial, 1 process "
                f"| {dd['n']:,} of {flow['dbos']['enqueue']['enqueued']:,} | {dd['rate_per_s']:,.1f} "
                f"| {dd.get('handoff_p50_ms', float('nan')):.0f} / {dd.get('handoff_p99_ms', float('nan')):.0f} | |"
            )
        w(
            f"| celery-durable `Concurrency(limit=5)` | 10 ms, prefork -c {pool} | {hand['n']:,} "
            f"| {hand['rate_per_s']:,.0f} "
            f"| {hand['handoff_p50_ms']:.1f} / {hand['handoff_p99_ms']:.1f} | ideal 500/s"
            + (
                f"; completion to the next body p50 / p99 {hand['body_handoff_p50_ms']:.1f} / "
                f"{hand['body_handoff_p99_ms']:.1f} ms |"
                if "body_handoff_p50_ms" in hand
                else " |"
            )
        )
        free = flow.get("handoff_free")
        if free:
            w(
                f"| celery-durable, no limit | 10 ms, prefork -c {pool} | {free['n']:,} | {free['rate_per_s']:,.0f} "
                f"| {DASH} | the same body and pool unlimited |"
            )
        lp = k.get("lock_paced")
        if lp:
            w(
                f"| Celery + Redis locks, `retry(countdown=1)` | 10 ms, prefork -c {lp.get('concurrency', 6)} "
                f"| {lp['n']:,} "
                f"| {lp['rate_per_s']:,.0f} "
                f"| {DASH} | {lp['misses']:,} lock misses, at most {lp['peak_running']} running; worker CPU "
                f"{lp['worker_cpu_ms_per_run']:.1f} ms/run |"
            )
        w("")
        rows.append(
            (
                "per-key backlog drain: celery-durable ÷ DBOS partitioned queue, 1 s polling (default)",
                [lim["rate_per_s"] / flow["dbos"]["default"]["rate_per_s"]],
                (">=", 10.0),
            )
        )
        rows.append(
            (
                "per-key backlog drain: celery-durable ÷ DBOS partitioned queue, 10 ms polling",
                [lim["rate_per_s"] / flow["dbos"]["fast"]["rate_per_s"]],
                None,
            )
        )
        if lk:
            rows.append(
                (
                    "per-key backlog drain, trivial body: celery-durable ÷ Celery + Redis locks",
                    [lim["rate_per_s"] / lk["rate_per_s"]],
                    (">", 1.0),
                )
            )
        if lp:
            rows.append(
                (
                    f"per-key backlog drain, 10 ms body, {pool} processes: celery-durable ÷ Celery + Redis locks",
                    [hand["rate_per_s"] / lp["rate_per_s"]],
                    (">=", 1.3),
                )
            )
        if free:
            rows.append(
                (
                    f"per-key backlog drain, 10 ms body, {pool} processes ÷ min(500/s, the same body unlimited)",
                    [hand["rate_per_s"] / min(500.0, free["rate_per_s"])],
                    (">=", 0.8),
                )
            )

    # --- workload 3 ---
    sl = lambda name, f: reps.get(lambda x: f(x["sleep"][name]))  # noqa: E731
    if sl("sleep-durable", lambda s: s["rate_per_s"]):
        n = r["size"]["sleepers"]
        broker = "RabbitMQ" if os.environ.get("BENCH_BROKER_URL", "").startswith("amqp") else "Redis"
        w(f"### 3. A 1-second durable sleep: {n} runs submitted at once, {broker} broker")
        w("")
        w(
            "| system | runs/s (first submit → last done) | submit s | lateness p50 ms | p90 | p99 | max | early "
            "| worker/process CPU ms/run |"
        )
        w("|---|---|---|---|---|---|---|---|---|")
        for name, label, cpu in (
            ("sleep-durable", "celery-durable `step.sleep`, prefork -c 2", "worker_cpu_ms_per_run"),
            ("sleep-celery", "Celery `apply_async(countdown=1)`, prefork -c 2", "worker_cpu_ms_per_run"),
            ("dbos", "DBOS `DBOS.sleep`, 1 process", "process_cpu_ms_per_run"),
        ):
            g = lambda f, name=name: sl(name, f)  # noqa: E731
            w(
                f"| {label} | {fmt(g(lambda s: s['rate_per_s']))} | {fmt(g(lambda s: s['submit_s']), 1)} "
                f"| {fmt(g(lambda s: s['lateness_ms']['p50']))} | {fmt(g(lambda s: s['lateness_ms']['p90']))} "
                f"| {fmt(g(lambda s: s['lateness_ms']['p99']))} | {fmt(g(lambda s: s['lateness_ms']['max']))} "
                f"| {fmt(g(lambda s: s['early']))} | {fmt(g(lambda s, cpu=cpu: s[cpu]), 1)} |"
            )
        w("")
        w(
            "celery-durable: first executions (to the suspension) ran at "
            f"{fmt(sl('sleep-durable', lambda s: s['suspended_per_s']))}/s against "
            f"{fmt(sl('sleep-durable', lambda s: n / s['submit_s']))}/s submitted; the waker published "
            f"{fmt(sl('sleep-durable', lambda s: s['published_after_due']))} of {n} after their wake time (p50 "
            f"{fmt(sl('sleep-durable', lambda s: s['publish_lead_ms']['p50']))} ms before it)."
        )
        w("")
        ratio = lambda a, b, f: reps.get(lambda x: f(x["sleep"][a]) / f(x["sleep"][b]))  # noqa: E731
        rows.append(
            (
                "1 s sleep, runs/s: celery-durable ÷ DBOS",
                ratio("sleep-durable", "dbos", lambda s: s["rate_per_s"]),
                (">", 1.0),
            )
        )
        rows.append(
            (
                "1 s sleep, runs/s: celery-durable ÷ Celery countdown",
                ratio("sleep-durable", "sleep-celery", lambda s: s["rate_per_s"]),
                (">", 1.0),
            )
        )
        for q in ("p50", "p99"):
            rows.append(
                (
                    f"1 s sleep, lateness {q}: celery-durable ÷ DBOS (< 1: we wake closer to the due time)",
                    ratio("sleep-durable", "dbos", lambda s, q=q: s["lateness_ms"][q]),
                    ("<", 1.0),
                )
            )
            rows.append(
                (
                    f"1 s sleep, lateness {q}: celery-durable ÷ Celery countdown",
                    ratio("sleep-durable", "sleep-celery", lambda s, q=q: s["lateness_ms"][q]),
                    ("<", 1.0),
                )
            )

    w("### Ratios (ours ÷ peer, same invocation) against the targets")
    w("")
    w("| comparison | ratio | target | verdict |")
    w("|---|---|---|---|")
    signs = {">=": "\u2265", ">": ">", "<": "<", "ref": "(\u2265"}
    for label, values, target in rows:
        if target is None:
            shown, text = DASH, "(reference)"
        else:
            op, t = target
            shown = f"{signs[op]} {t:g}{X}" + (")" if op == "ref" else "")
            if op == "ref":
                text = "(reference)"
            elif op == "<":
                text = verdict(values, t * 0.9999999, higher=False)
            else:
                text = verdict(values, t * (1.0000001 if op == ">" else 1.0))
        w(f"| {label} | {fmt(values, 2)}{X} | {shown} | {text} |")
    return "\n".join(lines)
