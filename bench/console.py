#!/usr/bin/env python3
"""The admin console on a large store: seeds a SQLite store with one million ledger rows (30
days of traffic over 200 keys, 50 users, 10 teams, 8 models, 5,000 conversations) and 2,000
audit records (key creations through the API), lets tollgate migrate it (building the hourly
and conversation rollups from the rows), then times every API call the console's pages make, and prints a table
against the 300 ms page target.

    bench/console.py                      # uses target/release/tollgate, else target/debug
    TOLLGATE_BIN=path/to/tollgate bench/console.py
    ROWS=200000 bench/console.py          # a smaller store

Loopback only. The store is written straight into SQLite (as an older version's records would
be), so startup also measures the migration's backfill."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ROWS = int(os.environ.get("ROWS", "1000000"))
AUDIT = int(os.environ.get("AUDIT_ROWS", "2000"))
REPEAT = int(os.environ.get("REPEAT", "5"))
MASTER = "bench-console-master-key-0123456789"
TARGET_MS = 300.0

# What the pages ask for (overview, keys, key page, spend, conversations, audit, MCP, agents).
CALLS = [
    ("overview: stats 24h", "/admin/v1/stats?since=24h&buckets=48"),
    ("overview: stats 30d", "/admin/v1/stats?since=30d&buckets=30"),
    ("overview: top models 24h", "/admin/v1/spend?group_by=model&since=24h&limit=5"),
    ("overview: top keys 30d", "/admin/v1/spend?group_by=key&since=30d&limit=5"),
    ("overview: top teams 30d", "/admin/v1/spend?group_by=team&since=30d&limit=5"),
    ("keys: list", "/admin/v1/keys?limit=100"),
    ("keys: 30-day cost by key", "/admin/v1/spend?group_by=key&since=30d&limit=1000"),
    ("key page: usage by day", "/admin/v1/spend?group_by=day&filter_by=key&filter=key7&since=30d"),
    ("key page: budgets", "/admin/v1/budgets"),
    ("spend: by day 30d", "/admin/v1/spend?group_by=day&since=30d"),
    ("spend: by model, team filter", "/admin/v1/spend?group_by=model&filter_by=team&filter=team3&since=30d"),
    ("spend: CSV by key 30d", "/admin/v1/spend?group_by=key&since=30d&format=csv"),
    ("conversations: list 24h", "/admin/v1/conversations?since=24h&limit=50"),
    ("conversations: list 7d", "/admin/v1/conversations?since=7d&limit=50"),
    ("conversation: one", "/admin/v1/conversations/conv42"),
    ("audit: newest page", "/admin/v1/audit?limit=50"),
    ("audit: by action prefix", "/admin/v1/audit?action=key.*&limit=50"),
    ("ledger: newest page", "/admin/v1/ledger?limit=50"),
    ("models: health", "/admin/v1/models/health"),
]

CONFIG = """\
listen: 127.0.0.1:{port}
master_key: {master}
storage:
  database_url: sqlite://{db}
logging:
  level: warn
providers:
  - name: demo
    kind: mock
models:
  - name: mock-echo
    targets: [{{provider: demo, model: echo}}]
"""


def binary() -> Path:
    if os.environ.get("TOLLGATE_BIN"):
        return Path(os.environ["TOLLGATE_BIN"])
    for profile in ("release", "debug"):
        p = REPO / "target" / profile / "tollgate"
        if p.exists():
            return p
    sys.exit("build tollgate first (cargo build --release -p tollgate), or set TOLLGATE_BIN")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(bin_: Path, config: Path, port: int) -> tuple[subprocess.Popen, float]:
    started = time.monotonic()
    proc = subprocess.Popen([str(bin_), "serve", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while time.monotonic() - started < 600:
        if proc.poll() is not None:
            sys.exit(f"tollgate exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
            return proc, time.monotonic() - started
        except OSError:
            time.sleep(0.1)
    proc.kill()
    sys.exit("tollgate did not come up")


def seed(db: Path) -> None:
    now = int(time.time() * 1000)
    span = 30 * 86_400_000
    con = sqlite3.connect(db)
    # A real record (from the call made before seeding) is the template of every row.
    (template,) = con.execute("SELECT record FROM ledger ORDER BY id LIMIT 1").fetchone()
    template = json.loads(template)
    # As an older version left it: the rollup and the statistics columns come with the
    # migration, which backfills them from the rows.
    con.executescript(
        """
        DROP TABLE ledger_hourly;
        DROP TABLE ledger_conversations;
        DROP INDEX IF EXISTS ledger_model_time;
        DROP INDEX IF EXISTS audit_log_action;
        DROP INDEX IF EXISTS audit_log_principal;
        ALTER TABLE ledger DROP COLUMN failed;
        ALTER TABLE ledger DROP COLUMN latency_class;
        DELETE FROM tollgate_migrations WHERE version IN (11, 13);
        """
    )

    def rows():
        for i in range(ROWS):
            record = json.dumps({
                **template, "request_id": f"r{i}", "model": f"model-{i % 8}",
                "key_id": f"key{i % 200}", "user": f"user{i % 50}", "team": f"team{i % 10}",
                "conversation_id": f"conv{i % 5000}",
                "prompt_tokens": 100, "completion_tokens": 50, "cost_usd": 0.0001 * (i % 17),
                "latency_ms": (i * 7) % 900, "status": 200 if i % 50 else 502,
                "outcome": "ok" if i % 50 else "error",
            })
            yield (now - (i * span) // ROWS, f"key{i % 200}", f"user{i % 50}", f"team{i % 10}",
                   f"model-{i % 8}", "demo", 0.0001 * (i % 17), f"conv{i % 5000}", None, 100, 50,
                   record)

    con.executemany(
        "INSERT INTO ledger (time_ms, key_id, user_id, team_id, model, provider, cost_usd,"
        " conversation_id, agent, prompt_tokens, completion_tokens, record)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows(),
    )
    con.commit()
    con.close()


def seed_audit(origin: str) -> None:
    """Audit records the normal way (they are hash-chained): key creations."""
    body = json.dumps({"name": "bench"}).encode()
    for _ in range(AUDIT):
        req = urllib.request.Request(f"{origin}/admin/v1/keys", data=body, method="POST",
                                     headers={"Authorization": f"Bearer {MASTER}",
                                              "Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=30).read()


def timed(origin: str, path: str) -> float:
    req = urllib.request.Request(f"{origin}{path}", headers={"Authorization": f"Bearer {MASTER}"})
    t = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=120) as res:
            res.read()
    except urllib.error.HTTPError as e:
        sys.exit(f"{path}: {e.code} {e.read().decode(errors='replace')}")
    return (time.perf_counter() - t) * 1000


def main() -> None:
    bin_ = binary()
    work = Path(tempfile.mkdtemp(prefix="tollgate-console-bench-"))
    try:
        db = work / "t.db"
        port = free_port()
        config = work / "tollgate.yaml"
        config.write_text(CONFIG.format(port=port, master=MASTER, db=db))
        origin = f"http://127.0.0.1:{port}"
        proc, _ = start(bin_, config, port)  # creates the schema
        call = urllib.request.Request(
            f"{origin}/v1/chat/completions", method="POST",
            data=json.dumps({"model": "mock-echo",
                             "messages": [{"role": "user", "content": "hi"}]}).encode(),
            headers={"Authorization": f"Bearer {MASTER}", "Content-Type": "application/json"})
        urllib.request.urlopen(call, timeout=30).read()
        proc.terminate()
        proc.wait(timeout=30)
        t = time.monotonic()
        seed(db)
        seeded = time.monotonic() - t
        proc, startup = start(bin_, config, port)
        try:
            seed_audit(origin)
            print(f"# console API on {ROWS:,} ledger rows ({bin_})\n")
            print(f"seeded in {seeded:.1f} s; started (migration and rollup backfill) in {startup:.1f} s\n")
            print(f"| call | p50 ms | max ms | within {TARGET_MS:.0f} ms |")
            print("|---|---:|---:|---|")
            worst = 0.0
            for name, path in CALLS:
                times = [timed(origin, path) for _ in range(REPEAT)]
                p50, top = statistics.median(times), max(times)
                worst = max(worst, p50)
                print(f"| {name} | {p50:.1f} | {top:.1f} | {'yes' if p50 <= TARGET_MS else 'NO'} |")
            print(f"\nslowest p50: {worst:.1f} ms")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
