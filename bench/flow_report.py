"""The results table of bench/flow_control.py (markdown, as pasted into docs/benchmarks.md)."""

from __future__ import annotations

import math
from typing import Any

DASH = "\u2013"


def num(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "\u2013"
    return f"{value:,.{digits}f}"


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def report(r: dict[str, Any]) -> str:
    lines: list[str] = []
    w = lines.append
    free, limited, handoff, blocked = r["free"], r["limited"], r["handoff"], r["blocked"]
    dbos = r.get("dbos")
    w(f"Command: `.venv/bin/python {r['command']}` ({r['elapsed_min']:.1f} min)")
    w("")
    w("Versions: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()))
    w("")
    w(f"`uptime` before: {r['uptime_before']}; after: {r['uptime_after']}")
    w(f"Leftover worker processes: {r['leftover_processes'] or 'none'}")
    w("")
    w("### Drain of one key's backlog (trivial step-less body)")
    w("")
    w(
        "| system | limit | runs | drain runs/s (run rows) | drain runs/s (wall) | enqueue /s "
        "| hand-off p50 / p99 ms | worker CPU ms/run | machine busy % |"
    )
    w("|---|---|---|---|---|---|---|---|---|")
    rows = [("celery-durable", free, "none"), ("celery-durable", limited, "5")]
    if "give-back" in r:
        rows.append(("celery-durable, release without the direct hand-over (as before)", r["give-back"], "5"))
    for label, d, limit in rows:
        hand = f"{num(d.get('handoff_p50_ms'), 1)} / {num(d.get('handoff_p99_ms'), 1)}" if limit == "5" else "\u2013"
        w(
            f"| {label} | {limit} | {d['n']:,} | {num(d['rate_per_s'])} | {num(d['wall_rate_per_s'])} "
            f"| {num(d['enqueue_per_s'])} | {hand} | {num(d['worker_cpu_ms_per_run'], 2)} "
            f"| {num(d['machine_busy_pct'])} |"
        )
    if dbos:
        for label in ("default", "fast"):
            d = dbos[label]
            w(
                f"| DBOS partitioned queue, polling {d['polling_s']:g} s | 5 | {d['n']:,} of "
                f"{dbos['enqueue']['enqueued']:,} | {num(d['rate_per_s'], 1)} | \u2013 "
                f"| {num(dbos['enqueue']['enqueue_per_s']) if label == 'default' else DASH} "
                f"| {num(d.get('handoff_p50_ms'), 1)} / {num(d.get('handoff_p99_ms'), 1)} "
                f"| {num(1000 * d['process_cpu_s'] / max(1, d['n']), 2)} | {num(d['machine_busy_pct'])} |"
            )
    w("")
    ratio = limited["rate_per_s"] / free["rate_per_s"]
    w("### Hand-off latency (k-th start minus (k-5)-th finish, run rows)")
    w("")
    w("| setting | runs | p50 ms | p99 ms | max ms | min ms | rate runs/s |")
    w("|---|---|---|---|---|---|---|")
    w(
        f"| 10 ms body, 6 pool processes (unsaturated) | {handoff['n']:,} | {num(handoff['handoff_p50_ms'], 1)} "
        f"| {num(handoff['handoff_p99_ms'], 1)} | {num(handoff['handoff_max_ms'], 1)} "
        f"| {num(handoff['handoff_min_ms'], 1)} | {num(handoff['rate_per_s'])} |"
    )
    w(
        f"| in the limited drain above (2 pool processes, queueing included) | {limited['n']:,} "
        f"| {num(limited['handoff_p50_ms'], 1)} | {num(limited['handoff_p99_ms'], 1)} "
        f"| {num(limited['handoff_max_ms'], 1)} | {num(limited['handoff_min_ms'], 1)} | {num(limited['rate_per_s'])} |"
    )
    w("")
    w(f"### Every run blocked ({blocked['pending']:,} pending, 5 holders sleeping; {blocked['seconds']:g} s windows)")
    w("")
    w(
        "| state | worker CPU ms/s | its PG backends CPU ms/s | all postgres processes CPU ms/s "
        "| PG transactions /s | PG tuples read /s | backends |"
    )
    w("|---|---|---|---|---|---|---|")
    for phase, title in (("idle", "idle worker, no runs"), ("blocked", "5 holders + backlog")):
        s = blocked[phase]
        w(
            f"| {title} | {num(s['worker_cpu_ms_per_s'], 2)} | {num(s['pg_cpu_ms_per_s'], 2)} "
            f"| {num(s.get('pg_all_cpu_ms_per_s'), 1)} "
            f"| {num(s['commits_per_s'], 1)} | {num(s['tuples_read_per_s'])} | {s['backends']} |"
        )
    w("")
    w("### Targets")
    w("")
    w("| figure | value | target | verdict |")
    w("|---|---|---|---|")
    w(f"| drain limit 5 / no limit | {ratio:.0%} | \u2265 80 % | {verdict(ratio >= 0.8)} |")
    if "give-back" in r:
        old = r["give-back"]["rate_per_s"]
        w(f"| drain limit 5 / no limit, release as before | {old / free['rate_per_s']:.0%} | \u2013 | \u2013 |")
        gain = limited["rate_per_s"] / old
        w(f"| drain limit 5: direct hand-over / as before | {gain:.2f}\u00d7 | \u2013 | \u2013 |")
    p50, p99 = handoff["handoff_p50_ms"], handoff["handoff_p99_ms"]
    w(f"| hand-off p50 (unsaturated) | {p50:.1f} ms | < 20 ms | {verdict(p50 < 20)} |")
    w(f"| hand-off p99 (unsaturated) | {p99:.1f} ms | < 100 ms | {verdict(p99 < 100)} |")
    idle, blk = blocked["idle"], blocked["blocked"]
    extra = blk["worker_cpu_ms_per_s"] + blk["pg_cpu_ms_per_s"] - idle["worker_cpu_ms_per_s"] - idle["pg_cpu_ms_per_s"]
    w(
        f"| CPU while blocked minus idle worker (worker + PG) | {extra:+.2f} ms/s "
        f"| idle (no polling) | {verdict(extra < 5)} (see notes) |"
    )
    if dbos:
        for label in ("default", "fast"):
            d = dbos[label]
            times = limited["rate_per_s"] / d["rate_per_s"]
            target, met = ("\u2265 10\u00d7 (issue 7)", verdict(times >= 10)) if label == "default" else (DASH, DASH)
            w(f"| drain limit 5: ours / DBOS at {d['polling_s']:g} s polling | {times:.1f}\u00d7 | {target} | {met} |")
            w(
                f"| hand-off p50: DBOS at {d['polling_s']:g} s / ours | "
                f"{d.get('handoff_p50_ms', float('nan')) / p50:.0f}\u00d7 | \u2013 | \u2013 |"
            )
    return "\n".join(lines)
