"""Markdown report of bench/scale.py: figures against the budgets of docs/scaling.md."""

from __future__ import annotations

DASH = "\u2013"  # en dash, as in the docs
TIMES = "\u00d7"

# (phase, key, label, which time the budget applies to, budget in ms or None)
ROWS = [
    ("tick_idle", "tick", "waker tick, idle (every check + slot backstops)", "server", 5.0),
    ("tick_idle", "tick_no_backstops", "waker tick, idle (9 ticks in 10: no backstops)", "server", 5.0),
    ("tick_idle", "tick_reconnect", "waker tick, idle, new connection each tick", "wall", None),
    ("tick_due", "tick", "waker tick, a batch of 500 due (incl. 500 publishes)", "wall", 500.0),
    ("sweeper", "tick", "sweeper: tick with 100 lost messages", "wall", 100.0),
    ("reaper", "tick", "reaper: tick with 100 expired leases", "wall", 100.0),
    ("admission", "plain", "`.delay()`, no flow control (baseline)", "wall", 10.0),
    ("admission", "hot_backlog", "`.delay()`, Concurrency key with a deep backlog", "wall", 10.0),
    ("admission", "free_key", "`.delay()`, Concurrency, new key (slot free)", "wall", 10.0),
    ("admission", "idempotency_existing", "`.delay()`, idempotency key already held", "wall", 10.0),
    ("admission", "idempotency_new", "`.delay()`, new idempotency key", "wall", 10.0),
    ("admission", "throttle", "`.delay()`, Throttle key among 400,000", "wall", 10.0),
    ("handoff", "hot", "slot hand-off, hot key (deep backlog)", "wall", 10.0),
    ("handoff", "user", "slot hand-off, user key (10 pending)", "wall", 10.0),
    ("changelist", "changelist", "admin changelist, default page", "wall", 200.0),
    ("changelist", "dashboard", "admin dashboard", "wall", None),
]


def ms(value: float | None) -> str:
    if value is None:
        return DASH
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def plan_text(plans: list[dict]) -> str:
    nodes: list[str] = []
    for statement in plans:
        for node in statement["nodes"]:
            if node not in nodes:
                nodes.append(node)
    indexes = sorted({n.split()[-1] for n in nodes if "Index" in n})
    seq = sorted({n.split()[-1] for n in nodes if n.startswith("Seq Scan")})
    text = ", ".join(f"`{i}`" for i in indexes) or "no index"
    return text + ("; **seq scan** " + ", ".join(f"`{s}`" for s in seq) if seq else "; no seq scan")


def verdict(p50: float, p99: float, budget: float | None) -> str:
    if budget is None:
        return DASH
    if p50 > budget:
        return f"**missed** ({p50 / budget:.1f}{TIMES})"
    return "met" + (" (p99 over)" if p99 > budget else "")


def report(results: dict) -> str:
    phases = results["phases"]
    out = [f"`{results['command']}`", ""]
    table = results.get("table", {})
    statuses = ", ".join(f"{k} {v:,}" for k, v in table.get("statuses", {}).items())
    out.append(
        f"Dataset: {table.get('runs', 0):,} runs ({statuses}), "
        f"~{table.get('steps_estimate', 0):,} steps, {table.get('flow_rows', 0):,} flow-state rows; run table "
        f"{table.get('run_table')}, step table {table.get('step_table')}, database {table.get('database')}."
    )
    v = results["versions"]
    dirty = v["celery_durable_uncommitted"]
    out.append(
        f"Commit `{v['commit']}`" + (f" + uncommitted {', '.join(dirty)}" if dirty else "") + f"; PostgreSQL "
        f"{v['postgresql']} (shared_buffers {v['shared_buffers']}), {v['cpus']} CPUs; "
        f"elapsed {results['elapsed_min']} min."
    )
    out += [
        "",
        "| operation | p50 ms | p99 ms | server p50 / p99 ms | statements | budget | verdict | plan (indexes) |",
    ]
    out.append("|---|---:|---:|---:|---:|---|---|---|")
    for phase, key, label, which, budget in ROWS:
        if phase not in phases or key not in phases[phase]:
            continue
        m = phases[phase][key]
        wall, server = m["wall_ms"], m["server_ms"]
        basis = server if which == "server" and server else wall
        server_text = f"{ms(server['p50'])} / {ms(server['p99'])}" if server else DASH
        budget_text = f"≤ {ms(budget)} ms {which}" if budget else DASH
        out.append(
            f"| {label} | {ms(wall['p50'])} | {ms(wall['p99'])} | {server_text} | {m['statements']} | {budget_text} | "
            f"{verdict(basis['p50'], basis['p99'], budget)} | {plan_text(m['plans']) if m['plans'] else DASH} |"
        )
    if "slot_hold" in phases:
        h = phases["slot_hold"]
        out += [
            "",
            f"One key with free slots (`Concurrency(limit=1_000_000)`, every call on the same key): its slot row is "
            f"locked {ms(h['take_ms']['p50'])} ms (p99 {ms(h['take_ms']['p99'])}) from the intake's UPDATE to COMMIT "
            f"and {ms(h['give_ms']['p50'])} ms (p99 {ms(h['give_ms']['p99'])}) when the run gives it back: at most "
            f"**~{h['serial_ceiling_runs_per_s']:,} runs/s through one key**, whatever the number of hosts.",
        ]
    if "prune" in phases:
        p = phases["prune"]
        rows_ok = "met" if p["rows_per_s"] >= 10_000 else "**missed**"
        batch_ok = "met" if p["batch_ms"]["max"] <= 1000 else "**missed**"
        batch = p["batch_ms"]
        out += [
            "",
            f"`durable_prune --older-than {p['older_than']}`: {p['runs_deleted']:,} runs + "
            f"{p['steps_deleted']:,} steps in {p['seconds']} s = **{p['runs_per_s']:,} runs/s, "
            f"{p['rows_per_s']:,} rows/s** (budget \u2265 10,000 rows/s: {rows_ok}); {p['batches']} batches, "
            f"p50 {ms(batch['p50'])} ms, longest {ms(batch['max'])} ms (budget \u2264 1,000 ms: {batch_ok}); "
            f"longest open transaction seen {p['longest_transaction_s']} s; a write on a live run meanwhile: "
            f"p50 {ms(p['probe_write_ms']['p50'])} ms, max {ms(p['probe_write_ms']['max'])} ms; "
            f"WAL {p['wal_bytes'] / 1e6:,.0f} MB. Dropping tables holding the same rows (a partition drop): "
            f"{p['drop_same_rows']['ms']} ms, WAL {p['drop_same_rows']['wal_bytes'] / 1e3:,.0f} kB.",
        ]
    out += ["", "Load (`uptime`) per phase:", ""]
    for phase, figures in phases.items():
        waited = figures.get("waited_s")
        others = figures.get("others_running")
        note = f"; waited {waited} s" if waited else ""
        note += "; **other benchmarks still running**" if others else ""
        out.append(f"- {phase}: {figures['uptime']}{note}")
    return "\n".join(out)
