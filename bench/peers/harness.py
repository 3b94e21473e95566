#!/usr/bin/env python3
"""tollgate against its peers, in front of one fast mock upstream. Run through bench/peers.sh,
which installs the peers and the load generators and passes their paths here.

Systems (all on 127.0.0.1, all forwarding to the same tollgate-bench-upstream, one worker thread):
  direct        the mock itself, the physical limit
  tollgate      virtual key checked, metrics, SQLite ledger; model bench-model (no budget/rate)
  tollgate-gov  the same process, model bench-gov: + budget reservation and rate limit per key
  portkey       @portkey-ai/gateway (Node), provider openai with a custom host
  litellm       LiteLLM proxy (Python, 1 worker), master key as the client key

Scenarios: closed loop (wrk -t1) chat completions at c=1 and c=32 with ~1 KB and ~100 KB bodies;
streaming, 200 chunks, time to first token and inter-chunk gaps (sse_client.py); open loop at a
fixed rate with oha, latency corrected for coordinated omission. Writes OUT/peers.md and
OUT/peers.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
POST_LUA = REPO / "bench" / "post.lua"
MASTER = "bench-master-key-0123456789"
LITELLM_KEY = "sk-bench-litellm-master-0123456789"
COMPLETION_TEXT = "The quick brown fox jumps over the lazy dog."
CHUNKS = 200

LABELS = {
    "direct": "direct to mock",
    "tollgate": "tollgate, governance off",
    "tollgate-gov": "tollgate, governance on",
    "portkey": "Portkey 1.15.2",
    "litellm": "LiteLLM 1.105.3",
}
GATEWAYS = ["tollgate", "tollgate-gov", "portkey", "litellm"]


def log(msg: str) -> None:
    print(f"[peers] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 30):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError as e:
        return 0, str(e).encode()


# ---------------------------------------------------------------------------------------------
# processes


class Procs:
    """Every process the harness starts, each in its own process group, ended at exit."""

    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv: list[str], logfile: Path, env: dict | None = None, cwd: Path | None = None):
        out = open(logfile, "wb")
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True)
        self.procs[name] = p
        return p

    def stop_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.time() + 5
        for p in self.procs.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def tree_pids(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = open(f"/proc/{d}/stat").read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def peak_rss_kib(pid: int) -> int:
    """VmHWM summed over the process and its descendants (KiB)."""
    total = 0
    for p in tree_pids(pid):
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


# ---------------------------------------------------------------------------------------------
# load generators


def parse_wrk(text: str) -> dict:
    def dur(v: str, unit: str) -> float:
        return float(v) * {"us": 1, "ms": 1000, "s": 1_000_000}[unit]

    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    rps = float(m.group(1)) if m else 0.0
    m = re.search(r"(\d+) requests in", text)
    total = int(m.group(1)) if m else 0
    pct = {}
    for p in (50, 90, 99):
        m = re.search(rf"^\s+{p}(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        pct[p] = dur(m.group(1), m.group(2)) if m else None
    errs = 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        errs += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        errs += sum(int(x) for x in m.groups())
    return {"rps": rps, "requests": total, "p50_us": pct[50], "p90_us": pct[90], "p99_us": pct[99], "errors": errs}


def wrk(url: str, body: Path, key: str, conns: int, seconds: float, headers: list[str], save: Path | None) -> dict:
    argv = ["wrk", "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--latency", "--timeout", "10s",
            "-s", str(POST_LUA)]
    for h in headers:
        argv += ["-H", h]
    argv.append(url)
    env = {**os.environ, "BODY_FILE": str(body), "API_KEY": key}
    r = subprocess.run(argv, capture_output=True, text=True, env=env)
    if save:
        save.write_text(r.stdout + r.stderr)
    res = parse_wrk(r.stdout)
    if r.returncode != 0 or res["p50_us"] is None:
        res["errors"] = max(res["errors"], 1)
        res["note"] = f"wrk exit {r.returncode}: {r.stderr.strip()[:200]}"
    return res


def oha(oha_bin: str, url: str, body: Path, key: str, headers: list[str], rate: int, seconds: float,
        save: Path | None) -> dict:
    argv = [oha_bin, "-z", f"{max(1, round(seconds))}s", "-q", str(rate), "--latency-correction",
            "-c", "16", "--worker-threads", "1", "--no-tui", "--output-format", "json", "-m", "POST",
            "-H", "content-type: application/json", "-D", str(body)]
    if key:
        argv += ["-H", f"Authorization: Bearer {key}"]
    for h in headers:
        argv += ["-H", h]
    argv.append(url)
    r = subprocess.run(argv, capture_output=True, text=True)
    if save:
        save.write_text(r.stdout + r.stderr)
    try:
        data = json.loads(r.stdout)
    except ValueError:
        return {"rps": 0.0, "requests": 0, "p50_us": None, "p90_us": None, "p99_us": None, "errors": 1,
                "note": f"oha exit {r.returncode}: {r.stderr.strip()[:200]}"}
    pct = data.get("latencyPercentiles", {})
    codes = data.get("statusCodeDistribution", {}) or {}
    ok = sum(n for c, n in codes.items() if str(c).startswith("2"))
    bad = sum(n for c, n in codes.items() if not str(c).startswith("2"))
    # Requests still in flight when the deadline hits are cancelled by oha and listed as
    # "aborted due to deadline": not errors of the system under test.
    errs = {k: v for k, v in (data.get("errorDistribution") or {}).items() if "deadline" not in k}
    summary = data.get("summary", {})

    def us(k):
        v = pct.get(k)
        return None if v is None else v * 1e6

    return {"rps": summary.get("requestsPerSec") or 0.0, "requests": ok + bad,
            "p50_us": us("p50"), "p90_us": us("p90"), "p99_us": us("p99"),
            "errors": bad + sum(errs.values()), "error_kinds": errs}


def stream_run(url: str, body: Path, headers: list[str], seconds: float, save: Path, max_streams: int = 1_000_000) -> dict:
    argv = [sys.executable, str(HERE / "sse_client.py"), "--url", url, "--body", str(body),
            "--duration", str(seconds), "--max-streams", str(max_streams), "--chunks", str(CHUNKS), "--json", str(save)]
    for h in headers:
        argv += ["--header", h]
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        return {"streams": 0, "errors": 1, "error_samples": [r.stderr.strip()[-300:]],
                "ttft_us": {}, "gap_us": {}, "streams_per_s": 0.0}
    return json.loads(save.read_text())


# ---------------------------------------------------------------------------------------------
# the run


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", required=True, help="dir with tollgate and tollgate-bench-upstream")
    ap.add_argument("--oha", required=True)
    ap.add_argument("--venv", default=str(HERE / ".venv"))
    ap.add_argument("--out", default=str(REPO / "bench" / "out"))
    args = ap.parse_args()

    duration = float(os.environ.get("DURATION", "10"))
    ll_duration = float(os.environ.get("LITELLM_DURATION", str(min(duration, 5.0))))
    rate = int(os.environ.get("OPEN_LOOP_RATE", "2000"))
    peers = [p for p in os.environ.get("PEERS", "portkey,litellm").split(",") if p]
    out = Path(args.out)
    raw = out / "peers-raw"
    raw.mkdir(parents=True, exist_ok=True)
    bin_dir = Path(args.bin_dir).resolve()
    args.venv = str(Path(args.venv).resolve())
    args.oha = str(Path(args.oha).resolve()) if "/" in args.oha else args.oha
    work = Path(tempfile.mkdtemp(prefix="tollgate-peers-"))
    procs = Procs()

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    try:
        return run(args, duration, ll_duration, rate, peers, out, raw, bin_dir, work, procs)
    finally:
        procs.stop_all()
        subprocess.run(["rm", "-rf", str(work)])


def run(args, duration, ll_duration, rate, peers, out, raw, bin_dir, work, procs) -> int:
    ports = {n: free_port() for n in ("up", "tollgate", "portkey", "litellm")}
    up_url = f"http://127.0.0.1:{ports['up']}/v1"
    notes: dict[str, str] = {}

    # --- the mock upstream and tollgate ----------------------------------------------------
    procs.start("direct", [str(bin_dir / "tollgate-bench-upstream"), "--listen", f"127.0.0.1:{ports['up']}",
                           "--threads", "1", "--chunks", str(CHUNKS)], work / "upstream.log")
    (work / "tollgate.yaml").write_text(f"""\
listen: 127.0.0.1:{ports['tollgate']}
master_key: {MASTER}
storage:
  database_url: sqlite://{work}/tollgate.db
logging:
  level: warn
providers:
  - name: bench
    kind: openai
    base_url: {up_url}
    api_key: sk-bench
models:
  - name: bench-model
    targets:
      - provider: bench
        model: bench
  # The same upstream under governance: every request takes a rate-limit permit and a budget
  # reservation, and settles both when it ends.
  - name: bench-gov
    targets:
      - provider: bench
        model: bench
prices:
  - model: bench
    input_per_mtok: 0.15
    output_per_mtok: 0.60
budgets:
  - name: bench-key-daily
    scope: key
    models: [bench-gov]
    period: daily
    limit_usd: 1000000000
rate_limits:
  - name: bench-key-rate
    scope: key
    models: [bench-gov]
    rpm: 1000000000
    tpm: 1000000000000
""")
    procs.start("tollgate", [str(bin_dir / "tollgate"), "serve", "--config", str(work / "tollgate.yaml")],
                work / "tollgate.log")

    # --- peers (they start in parallel: LiteLLM takes seconds to import) -----------------------
    if "portkey" in peers:
        procs.start("portkey", ["node", str(HERE / "portkey-loopback.mjs"), f"--port={ports['portkey']}", "--headless"],
                    work / "portkey.log", env={"NODE_ENV": "production"}, cwd=HERE)
    if "litellm" in peers:
        (work / "litellm.yaml").write_text(f"""\
model_list:
  - model_name: bench-model
    litellm_params:
      model: openai/bench
      api_base: {up_url}
      api_key: sk-bench
general_settings:
  # No database: the master key is the only client key (virtual keys need Postgres). It is
  # checked on every request.
  master_key: {LITELLM_KEY}
""")
        procs.start("litellm", [str(Path(args.venv) / "bin" / "litellm"), "--config", str(work / "litellm.yaml"),
                                "--host", "127.0.0.1", "--port", str(ports["litellm"]), "--num_workers", "1"],
                    work / "litellm.log", cwd=work,
                    env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR",
                         # the mock's 200 chunks are all the same token; LiteLLM's loop guard
                         # would cut the stream at 100
                         "REPEATED_STREAMING_CHUNK_LIMIT": "1000000",
                         "NO_DOCS": "True", "NO_REDOC": "True"})

    def wait(name: str, ready, seconds: float) -> bool:
        deadline = time.time() + seconds
        while time.time() < deadline:
            p = procs.procs[name]
            if p.poll() is not None:
                return False
            if ready():
                return True
            time.sleep(0.1)
        return False

    if not wait("direct", lambda: port_open(ports["up"]), 20):
        log("the mock upstream did not start:\n" + (work / "upstream.log").read_text()[-2000:])
        return 1
    if not wait("tollgate", lambda: http("GET", f"http://127.0.0.1:{ports['tollgate']}/healthz", timeout=1)[0] == 200, 30):
        log("tollgate did not start:\n" + (work / "tollgate.log").read_text()[-2000:])
        return 1
    status, body = http("POST", f"http://127.0.0.1:{ports['tollgate']}/admin/v1/keys",
                        json.dumps({"name": "bench", "models": ["bench-*"]}).encode(),
                        {"Authorization": f"Bearer {MASTER}", "content-type": "application/json"})
    if status not in (200, 201):
        log(f"creating a tollgate key failed: HTTP {status} {body[:300]!r}")
        return 1
    tg_key = json.loads(body)["secret"]

    # Per system: URL, client key, extra headers, model name.
    systems: dict[str, dict] = {
        "direct": {"url": f"{up_url}/chat/completions", "key": "", "headers": [], "model": "bench", "pid": "direct"},
        "tollgate": {"url": f"http://127.0.0.1:{ports['tollgate']}/v1/chat/completions", "key": tg_key,
                     "headers": [], "model": "bench-model", "pid": "tollgate"},
        "tollgate-gov": {"url": f"http://127.0.0.1:{ports['tollgate']}/v1/chat/completions", "key": tg_key,
                         "headers": [], "model": "bench-gov", "pid": "tollgate"},
    }
    if "portkey" in peers:
        systems["portkey"] = {"url": f"http://127.0.0.1:{ports['portkey']}/v1/chat/completions", "key": "sk-bench",
                              "headers": ["x-portkey-provider: openai", f"x-portkey-custom-host: {up_url}"],
                              "model": "bench", "pid": "portkey"}
        if not wait("portkey", lambda: port_open(ports["portkey"]), 60):
            notes["portkey"] = "did not start: " + (work / "portkey.log").read_text(errors="replace")[-500:]
    if "litellm" in peers:
        systems["litellm"] = {"url": f"http://127.0.0.1:{ports['litellm']}/v1/chat/completions", "key": LITELLM_KEY,
                              "headers": [], "model": "bench-model", "pid": "litellm"}
        if not wait("litellm", lambda: http("GET", f"http://127.0.0.1:{ports['litellm']}/health/liveliness",
                                            timeout=1)[0] == 200, 120):
            notes["litellm"] = "did not start: " + (work / "litellm.log").read_text(errors="replace")[-500:]

    # --- bodies ------------------------------------------------------------------------------
    big = "lorem ipsum dolor sit amet " * 3800  # ~100 KB
    for name, s in systems.items():
        small = {"model": s["model"], "messages": [{"role": "system", "content": "x" * 900},
                                                    {"role": "user", "content": "Say something short."}]}
        large = {"model": s["model"], "messages": [{"role": "user", "content": big}]}
        # Compact: the mock streams when it sees the bytes "stream":true.
        stream = {"model": s["model"], "stream": True, "messages": [{"role": "user", "content": "Say something short."}]}
        for tag, b in (("1k", small), ("100k", large), ("stream", stream)):
            path = work / f"body-{name}-{tag}.json"
            path.write_text(json.dumps(b, separators=(",", ":")))
            s[f"body-{tag}"] = path

    def hdrs(s: dict) -> dict:
        h = {"content-type": "application/json"}
        if s["key"]:
            h["Authorization"] = f"Bearer {s['key']}"
        for line in s["headers"]:
            k, _, v = line.partition(":")
            h[k.strip()] = v.strip()
        return h

    # --- checks: each system answers with the mock's completion, and streams 200 chunks ---------
    for name, s in systems.items():
        if name in notes:
            continue
        status, body = http("POST", s["url"], s["body-1k"].read_bytes(), hdrs(s))
        if status != 200 or COMPLETION_TEXT not in body.decode(errors="replace"):
            notes[name] = f"check failed: HTTP {status} {body[:300].decode(errors='replace')}"
            continue
        (raw / f"answer-{name}.json").write_bytes(body)
        st = stream_run(s["url"], s["body-stream"], [f"{k}: {v}" for k, v in hdrs(s).items()
                                                     if k != "content-type"], 30, raw / f"check-stream-{name}.json", 1)
        if st["errors"] or st["streams"] != 1:
            notes[name] = f"streaming check failed: {st.get('error_samples')}"
    for name in ("direct", "tollgate", "tollgate-gov"):
        if name in notes:
            log(f"{name}: {notes[name]}")
            return 1
    for name, why in notes.items():
        log(f"{name} left out: {why}")
    live = [n for n in systems if n not in notes]
    log("answering: " + ", ".join(live))

    # --- warm-up --------------------------------------------------------------------------------
    for name in live:
        s = systems[name]
        wrk(s["url"], s["body-1k"], s["key"], 4 if name == "litellm" else 8, 2, s["headers"], None)

    def secs(name: str) -> float:
        return ll_duration if name == "litellm" else duration

    def rss(name: str) -> int:
        return peak_rss_kib(procs.procs[systems[name]["pid"]].pid)

    # --- closed loop ------------------------------------------------------------------------------
    closed = []
    for size in ("1k", "100k"):
        for c in (1, 32):
            for name in live:
                s = systems[name]
                log(f"closed loop {size} c={c} {name}")
                r = wrk(s["url"], s[f"body-{size}"], s["key"], c, secs(name), s["headers"],
                        raw / f"wrk-{size}-c{c}-{name}.txt")
                closed.append({"body": size, "concurrency": c, "system": name, "duration_s": secs(name),
                               **r, "peak_rss_kib": rss(name)})

    # --- streaming --------------------------------------------------------------------------------
    streaming = []
    for name in live:
        s = systems[name]
        log(f"streaming {name}")
        extra = [f"{k}: {v}" for k, v in hdrs(s).items() if k != "content-type"]
        st = stream_run(s["url"], s["body-stream"], extra, secs(name), raw / f"stream-{name}.json")
        streaming.append({"system": name, "duration_s": secs(name), **st, "peak_rss_kib": rss(name)})

    # --- open loop --------------------------------------------------------------------------------
    c32 = {r["system"]: r["rps"] for r in closed if r["body"] == "1k" and r["concurrency"] == 32}
    opened = []
    for name in live:
        s = systems[name]
        if name not in ("direct", "tollgate", "tollgate-gov") and c32.get(name, 0) < rate:
            opened.append({"system": name, "rate": rate, "skipped":
                           f"cannot sustain {rate} req/s (closed-loop c=32 max {c32.get(name, 0):.0f} req/s)"})
            continue
        log(f"open loop {rate}/s {name}")
        r = oha(args.oha, s["url"], s["body-1k"], s["key"], s["headers"], rate, duration, raw / f"oha-{name}.json")
        opened.append({"system": name, "rate": rate, "duration_s": duration, **r, "peak_rss_kib": rss(name)})

    # --- totals -----------------------------------------------------------------------------------
    rss_final = {name: rss(name) for name in live}
    _, metrics_text = http("GET", f"http://127.0.0.1:{ports['tollgate']}/metrics",
                           headers={"Authorization": f"Bearer {MASTER}"})
    tg_errors = 0
    for line in metrics_text.decode(errors="replace").splitlines():
        if line.startswith("tollgate_requests_total") and re.search(r'status="[45]\d\d"', line):
            tg_errors += int(float(line.rsplit(" ", 1)[1]))

    result = {
        "version": 1,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "duration_s": duration,
        "litellm_duration_s": ll_duration,
        "open_loop_rate": rate,
        "versions": versions(args, bin_dir),
        "systems": {n: {"label": LABELS[n], "available": n not in notes, "note": notes.get(n, ""),
                        "peak_rss_kib": rss_final.get(n)} for n in systems},
        "tollgate_4xx_5xx": tg_errors,
        "closed_loop": closed,
        "streaming": streaming,
        "open_loop": opened,
    }
    result["targets"], result["metrics"] = targets_and_metrics(result)
    report = render(result)
    print(report)
    (out / "peers.md").write_text(report + "\n")
    (out / "peers.json").write_text(json.dumps(result, indent=1) + "\n")
    log(f"wrote {out / 'peers.md'} and {out / 'peers.json'} (raw outputs in {raw})")
    return 0


def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    mem = next((int(ln.split()[1]) for ln in open("/proc/meminfo") if ln.startswith("MemTotal")), 0)
    return {"cores": os.cpu_count(), "cpu": cpu, "mem_mib": mem // 1024, "kernel": f"{platform.system()} {platform.release()}"}


def versions(args, bin_dir: Path) -> dict:
    def cmd(argv):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            return (r.stdout or r.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"

    v = {"tollgate": cmd([str(bin_dir / "tollgate"), "--version"]).removeprefix("tollgate "),
         "wrk": cmd(["wrk", "-v"]).split(" Copyright")[0],
         "oha": cmd([args.oha, "--version"]), "node": cmd(["node", "--version"]), "python": platform.python_version()}
    try:
        v["portkey"] = json.loads((HERE / "node_modules/@portkey-ai/gateway/package.json").read_text())["version"]
        v["@hono/node-server"] = json.loads((HERE / "node_modules/@hono/node-server/package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        v["portkey"] = "?"
    commit = cmd(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    v["commit"] = commit + ("+changes" if dirty else "")
    v["litellm"] = cmd([str(Path(args.venv) / "bin" / "python"), "-c",
                        "import importlib.metadata as m; print(m.version('litellm'))"])
    return v


# ---------------------------------------------------------------------------------------------
# targets, metrics for bench/compare, report


def row(result: dict, section: str, system: str, **kw) -> dict | None:
    for r in result[section]:
        if r["system"] == system and all(r.get(k) == v for k, v in kw.items()) and not r.get("skipped"):
            return r
    return None


def targets_and_metrics(res: dict):
    def cl(system, body, c):
        return row(res, "closed_loop", system, body=body, concurrency=c)

    def ratio(a, b):
        return a / b if a and b else None

    def sub(a, b):
        return a - b if a is not None and b is not None else None

    d1, d32 = cl("direct", "1k", 1), cl("direct", "1k", 32)
    g1, g32 = cl("tollgate-gov", "1k", 1), cl("tollgate-gov", "1k", 32)
    t1, t32 = cl("tollgate", "1k", 1), cl("tollgate", "1k", 32)
    pk32, ll32 = cl("portkey", "1k", 32), cl("litellm", "1k", 32)
    ol_d, ol_g = row(res, "open_loop", "direct"), row(res, "open_loop", "tollgate-gov")
    st = {r["system"]: r for r in res["streaming"] if r.get("streams")}
    rss_tg = res["systems"]["tollgate"]["peak_rss_kib"]

    def get(r, k):
        return r.get(k) if r else None

    targets = []

    def target(name, text, value, op, limit, unit):
        ok = None if value is None else (value >= limit if op == ">=" else value <= limit)
        targets.append({"name": name, "text": text, "value": value, "op": op, "target": limit, "unit": unit, "pass": ok})

    target("vs_portkey_rps_c32", "tollgate (governance on) throughput at c=32 vs Portkey", ratio(get(g32, "rps"), get(pk32, "rps")), ">=", 20, "x")
    target("vs_litellm_rps_c32", "tollgate (governance on) throughput at c=32 vs LiteLLM", ratio(get(g32, "rps"), get(ll32, "rps")), ">=", 200, "x")
    target("added_p50_c1", "added p50 at c=1 vs direct, governance on", sub(get(g1, "p50_us"), get(d1, "p50_us")), "<=", 60, "µs")
    target("added_p99_open", f"added p99 at {res['open_loop_rate']} req/s open loop, governance on",
           sub(get(ol_g, "p99_us"), get(ol_d, "p99_us")), "<=", 500, "µs")
    target("vs_direct_rps_c32", "throughput at c=32 vs direct, governance on", ratio(get(g32, "rps"), get(d32, "rps")), ">=", 0.5, "ratio")
    target("gov_on_off_rps_c32", "throughput at c=32, governance on / off", ratio(get(g32, "rps"), get(t32, "rps")), ">=", 0.8, "ratio")
    target("peak_rss", "tollgate peak RSS (VmHWM, whole run)", rss_tg / 1024 if rss_tg else None, "<=", 64, "MiB")

    metrics = {}

    def metric(name, value, better, unit, floor=0.0, check=True):
        if value is not None:
            metrics[name] = {"value": value, "better": better, "unit": unit, "floor": floor, "check": check}

    for sysname, tag in (("tollgate", "tollgate"), ("tollgate-gov", "tollgate_gov")):
        for body in ("1k", "100k"):
            for c in (1, 32):
                t, d = cl(sysname, body, c), cl("direct", body, c)
                metric(f"{tag}_vs_direct_rps_{body}_c{c}", ratio(get(t, "rps"), get(d, "rps")), "higher", "ratio")
            t, d = cl(sysname, body, 1), cl("direct", body, 1)
            metric(f"{tag}_added_p50_us_{body}_c1", sub(get(t, "p50_us"), get(d, "p50_us")), "lower", "µs", floor=5)
        metric(f"{tag}_added_p99_us_open_loop", sub(get(row(res, "open_loop", sysname), "p99_us"), get(ol_d, "p99_us")),
               "lower", "µs", floor=50)
    metric("gov_on_off_rps_1k_c32", ratio(get(g32, "rps"), get(t32, "rps")), "higher", "ratio")
    metric("gov_on_off_rps_1k_c1", ratio(get(g1, "rps"), get(t1, "rps")), "higher", "ratio")
    if "direct" in st:
        for sysname, tag in (("tollgate", "tollgate"), ("tollgate-gov", "tollgate_gov")):
            if sysname in st:
                metric(f"{tag}_stream_added_ttft_p50_us", st[sysname]["ttft_us"]["50"] - st["direct"]["ttft_us"]["50"], "lower", "µs", floor=10)
                metric(f"{tag}_stream_added_gap_p50_us", st[sysname]["gap_us"]["50"] - st["direct"]["gap_us"]["50"], "lower", "µs", floor=2)
    metric("tollgate_peak_rss_mib", rss_tg / 1024 if rss_tg else None, "lower", "MiB", floor=1)
    # Against the peers: shown, not checked (they move with the peers' own noise).
    metric("tollgate_gov_vs_portkey_rps_1k_c32", ratio(get(g32, "rps"), get(pk32, "rps")), "higher", "x", check=False)
    metric("tollgate_gov_vs_litellm_rps_1k_c32", ratio(get(g32, "rps"), get(ll32, "rps")), "higher", "x", check=False)
    return targets, metrics


def fmt(v, digits=0) -> str:
    if v is None:
        return "—"
    return f"{v:,.{digits}f}".replace(",", " ")


def render(res: dict) -> str:
    m = res["machine"]
    v = res["versions"]
    lines = ["# tollgate against peers",
             "",
             f"machine: {m['cores']} cores, {m['cpu']}, {m['mem_mib']} MiB, {m['kernel']}; load generators on the same cores",
             f"versions: tollgate {v['tollgate']} ({v.get('commit')}); Portkey gateway {v.get('portkey')} (node {v['node']}, @hono/node-server {v.get('@hono/node-server')}); "
             f"LiteLLM {v['litellm']} (python {v['python']}, 1 worker); {v['wrk']}; {v['oha']}",
             f"{res['duration_s']:g} s per row (LiteLLM {res['litellm_duration_s']:g} s); one mock upstream (tollgate-bench-upstream, 1 thread) behind every system; "
             "every gateway checks a client key (Portkey: none to check, see README)",
             ""]
    for name, s in res["systems"].items():
        if not s["available"]:
            lines.append(f"**{s['label']} left out:** {s['note']}")
    rss = {n: s["peak_rss_kib"] for n, s in res["systems"].items()}

    direct = {(r["body"], r["concurrency"]): r for r in res["closed_loop"] if r["system"] == "direct"}
    lines += ["## Chat completion, non-streaming (closed loop, wrk -t1)", "",
              "| scenario | system | req/s | p50 µs | p90 µs | p99 µs | added p50 µs | errors | peak RSS MiB |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in res["closed_loop"]:
        d = direct.get((r["body"], r["concurrency"]))
        added = r["p50_us"] - d["p50_us"] if r["system"] != "direct" and d and r["p50_us"] is not None and d["p50_us"] is not None else None
        lines.append(f"| {r['body']} body, c={r['concurrency']} | {LABELS[r['system']]} | {fmt(r['rps'])} | {fmt(r['p50_us'])} | "
                     f"{fmt(r['p90_us'])} | {fmt(r['p99_us'])} | {fmt(added)} | {r['errors']} | {fmt(r['peak_rss_kib'] / 1024, 1)} |")

    lines += ["", f"## Streaming, {CHUNKS} chunks (one stream at a time, sse_client.py)", "",
              "| system | streams/s | TTFT p50 µs | TTFT p99 µs | gap p50 µs | gap p99 µs | added TTFT p50 / p99 µs | added gap p50 / p99 µs | errors | peak RSS MiB |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    sd = next((r for r in res["streaming"] if r["system"] == "direct" and r.get("streams")), None)
    for r in res["streaming"]:
        t, g = r.get("ttft_us") or {}, r.get("gap_us") or {}

        def added(a, key):
            if r["system"] == "direct" or not sd or key not in a:
                return "—"
            base = sd["ttft_us" if a is t else "gap_us"]
            return f"{a[key] - base[key]:+.0f}"

        lines.append(f"| {LABELS[r['system']]} | {fmt(r.get('streams_per_s'), 1)} | {fmt(t.get('50'))} | {fmt(t.get('99'))} | "
                     f"{fmt(g.get('50'), 1)} | {fmt(g.get('99'), 1)} | {added(t, '50')} / {added(t, '99')} | "
                     f"{added(g, '50')} / {added(g, '99')} | {r['errors']} | {fmt(r['peak_rss_kib'] / 1024, 1)} |")
    for r in res["streaming"]:
        if r.get("error_samples"):
            lines.append(f"\n{LABELS[r['system']]} stream errors, e.g.: {'; '.join(r['error_samples'])}")

    lines += ["", "## Governance on versus off (tollgate, 1k body)", "",
              "| concurrency | off req/s | on req/s | on/off (target ≥ 0.8 at c=32) | off p50 µs | on p50 µs | on − off p50 µs |",
              "|---|---|---|---|---|---|---|"]
    for c in (1, 32):
        off = row(res, "closed_loop", "tollgate", body="1k", concurrency=c)
        on = row(res, "closed_loop", "tollgate-gov", body="1k", concurrency=c)
        if off and on:
            lines.append(f"| {c} | {fmt(off['rps'])} | {fmt(on['rps'])} | {on['rps'] / off['rps'] if off['rps'] else 0:.2f} | "
                         f"{fmt(off['p50_us'])} | {fmt(on['p50_us'])} | {fmt(on['p50_us'] - off['p50_us'])} |")

    lines += ["", f"## Open loop, {res['open_loop_rate']} req/s (oha -q, latency corrected for coordinated omission; 1k body)", "",
              "| system | req/s | p50 µs | p90 µs | p99 µs | added p50 µs | added p99 µs | errors | peak RSS MiB |",
              "|---|---|---|---|---|---|---|---|---|"]
    od = row(res, "open_loop", "direct")
    for r in res["open_loop"]:
        if r.get("skipped"):
            lines.append(f"| {LABELS[r['system']]} | skipped: {r['skipped']} | | | | | | | |")
            continue
        a50 = r["p50_us"] - od["p50_us"] if od and r["system"] != "direct" and r["p50_us"] is not None else None
        a99 = r["p99_us"] - od["p99_us"] if od and r["system"] != "direct" and r["p99_us"] is not None else None
        lines.append(f"| {LABELS[r['system']]} | {fmt(r['rps'])} | {fmt(r['p50_us'])} | {fmt(r['p90_us'])} | {fmt(r['p99_us'])} | "
                     f"{fmt(a50)} | {fmt(a99)} | {r['errors']} | {fmt(r['peak_rss_kib'] / 1024, 1)} |")

    lines += ["", "## Peak RSS (VmHWM over the whole run)", "", "| system | peak RSS MiB | how |", "|---|---|---|"]
    how = {"direct": "the mock process", "tollgate": "the one tollgate process (governance on and off)",
           "portkey": "the node process (and children, none expected)",
           "litellm": "sum over the LiteLLM process tree (one process with --num_workers 1)"}
    for n in ("direct", "tollgate", "portkey", "litellm"):
        if rss.get(n):
            lines.append(f"| {'tollgate' if n == 'tollgate' else LABELS[n]} | {rss[n] / 1024:.1f} | {how[n]} |")
    lines.append(f"\ntollgate counted {res['tollgate_4xx_5xx']} 4xx/5xx answers (its /metrics).")

    lines += ["", "## Targets (reported, not enforced; bench/compare checks regressions)", "",
              "| target | value | limit | result |", "|---|---|---|---|"]
    for t in res["targets"]:
        unit = t["unit"]
        if t["value"] is None:
            val, verdict = "—", "n/a"
        else:
            val = f"{t['value']:.1f}×" if unit == "x" else f"{t['value']:.1%}" if unit == "ratio" else f"{t['value']:+.0f} µs" if unit == "µs" else f"{t['value']:.1f} {unit}"
            verdict = "pass" if t["pass"] else "FAIL"
        lim = f"{t['op']} {t['target']}×" if unit == "x" else f"{t['op']} {t['target']:.0%}" if unit == "ratio" else f"{t['op']} {t['target']} {unit}"
        lines.append(f"| {t['text']} | {val} | {lim} | {verdict} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
