#!/usr/bin/env bash
# tollgate's tool-layer benchmark: MCP `tools/call` direct to an MCP server versus through
# tollgate's `/mcp` with everything a call pays on: virtual key check, a policy set evaluated on
# every call, a per-key quota (rate and concurrency) and the audit chain (every tools/call is
# appended), SQLite store. Same upstream, same load, one run.
#
#   bench/mcp.sh                 # defaults: 10 s per measurement
#   DURATION=30 bench/mcp.sh     # longer runs
#
# The upstream is tollgate-conformance-server (rmcp, Streamable HTTP) and the tool is
# `test_simple_text`; its answers are SSE streams that close after the result. Prints a table
# and writes bench/out/mcp-latest.md. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
OUT=bench/out
mkdir -p "$OUT"
CONCURRENCY=(1 4 16)

if ! command -v wrk >/dev/null; then
  echo "installing wrk from Debian" >&2
  (apt-get install -y -qq wrk >/dev/null 2>&1) || (apt-get update -qq >/dev/null && apt-get install -y -qq wrk >/dev/null)
fi

cargo build --release --locked -p tollgate -p tollgate-conformance-server --bins >&2
BIN=target/release

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP_PORT=$(free_port)
GW_PORT=$(free_port)
WORK=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

"$BIN/tollgate-conformance-server" --port "$UP_PORT" > "$WORK/upstream.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q '^listening on ' "$WORK/upstream.log" && break; sleep 0.1; done
UP_URL=$(awk '/^listening on / {print $3; exit}' "$WORK/upstream.log")
[ -n "$UP_URL" ] || { echo "the conformance server did not start:" >&2; cat "$WORK/upstream.log" >&2; exit 1; }

MASTER=bench-master-key-0123456789
cat > "$WORK/tollgate.yaml" <<YAML
listen: 127.0.0.1:$GW_PORT
master_key: $MASTER
storage:
  database_url: sqlite://$WORK/tollgate.db
logging:
  level: warn
mcp:
  prefix: never
  servers:
    - name: conformance
      url: $UP_URL
  # Checked on every call, never refusing one: a per-key token bucket and a concurrency cap.
  quotas:
    - name: bench-quota
      match: ["conformance/*"]
      per_minute: 1000000000
      concurrent: 1000
# Evaluated on every tool call: two rules, the first never matches.
policies:
  - name: tools
    applies_to: "request.layer == 'tool'"
    rules:
      - name: no-secrets
        when: "request.tool == 'read_secret'"
        action: deny
      - name: allow-rest
        when: "true"
        action: allow
YAML
"$BIN/tollgate" serve --config "$WORK/tollgate.yaml" > "$WORK/tollgate.log" 2>&1 &
GW_PID=$!
pids+=($GW_PID)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$GW_PORT/healthz" >/dev/null && break; sleep 0.1; done
KEY=$(curl -sf "http://127.0.0.1:$GW_PORT/admin/v1/keys" -H "Authorization: Bearer $MASTER" \
  -H 'content-type: application/json' -d '{"name":"bench"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])')
GW_URL="http://127.0.0.1:$GW_PORT/mcp"

# MCP handshake: initialize, take the session id, send notifications/initialized.
mcp_init() { # url version key -> session id on stdout
  local url=$1 version=$2 key=$3 auth=() sid
  [ -n "$key" ] && auth=(-H "Authorization: Bearer $key")
  curl -sS -D "$WORK/init.headers" -o "$WORK/init.body" "$url" "${auth[@]}" \
    -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' \
    -d "{\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"initialize\",\"params\":{\"protocolVersion\":\"$version\",\"capabilities\":{},\"clientInfo\":{\"name\":\"tollgate-bench\",\"version\":\"1.0.0\"}}}"
  sid=$(awk 'tolower($1) == "mcp-session-id:" {print $2}' "$WORK/init.headers" | tr -d '\r')
  if [ -z "$sid" ] || ! grep -q "\"protocolVersion\":\"$version\"" "$WORK/init.body"; then
    echo "initialize at $url (protocol $version) failed:" >&2
    cat "$WORK/init.headers" "$WORK/init.body" >&2
    return 1
  fi
  curl -sS -f -o /dev/null "$url" "${auth[@]}" \
    -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' \
    -H "Mcp-Session-Id: $sid" -H "MCP-Protocol-Version: $version" \
    -d '{"jsonrpc":"2.0","method":"notifications/initialized"}' || return 1
  echo "$sid"
}

# One tools/call with curl; fails loudly unless the answer is a result and not a tool error.
mcp_check() { # name url version key session
  local name=$1 url=$2 version=$3 key=$4 sid=$5 auth=() code
  [ -n "$key" ] && auth=(-H "Authorization: Bearer $key")
  code=$(curl -sS -o "$WORK/check.body" -w '%{http_code}' "$url" "${auth[@]}" \
    -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' \
    -H "Mcp-Session-Id: $sid" -H "MCP-Protocol-Version: $version" \
    -d '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"test_simple_text","arguments":{}}}')
  if [ "$code" != 200 ] || ! grep -q '"result":' "$WORK/check.body" || grep -q '"isError":true' "$WORK/check.body"; then
    echo "tools/call $name: HTTP $code, not a tool result:" >&2
    cat "$WORK/check.body" >&2
    return 1
  fi
  cp "$WORK/check.body" "$OUT/mcp-answer-$name.txt"
}

DIRECT_SID=$(mcp_init "$UP_URL" 2025-06-18 "")
GW_SID=$(mcp_init "$GW_URL" 2025-06-18 "$KEY")
GW_SSE_SID=$(mcp_init "$GW_URL" 2025-11-25 "$KEY")
mcp_check direct "$UP_URL" 2025-06-18 "" "$DIRECT_SID"
mcp_check tollgate "$GW_URL" 2025-06-18 "$KEY" "$GW_SID"
mcp_check tollgate-sse "$GW_URL" 2025-11-25 "$KEY" "$GW_SSE_SID"

run() { # name url version key session conns seconds
  MCP_SESSION="$5" MCP_VERSION="$3" API_KEY="$4" \
    wrk -t1 -c"$6" -d"$7s" --latency -s bench/mcp.lua "$2" > "$OUT/mcp-$1.txt"
}

# Warm up every path (the first call of a session also fetches and pins the tool list).
run warmup-direct "$UP_URL" 2025-06-18 "" "$DIRECT_SID" 4 2
run warmup-tollgate "$GW_URL" 2025-06-18 "$KEY" "$GW_SID" 4 2
run warmup-tollgate-sse "$GW_URL" 2025-11-25 "$KEY" "$GW_SSE_SID" 4 2

for c in "${CONCURRENCY[@]}"; do
  run "direct-c$c" "$UP_URL" 2025-06-18 "" "$DIRECT_SID" "$c" "$DURATION"
  run "tollgate-c$c" "$GW_URL" 2025-06-18 "$KEY" "$GW_SID" "$c" "$DURATION"
  run "tollgate-sse-c$c" "$GW_URL" 2025-11-25 "$KEY" "$GW_SSE_SID" "$c" "$DURATION"
done

RSS_KB=$(awk '/VmHWM/ {print $2}' "/proc/$GW_PID/status")
sleep 1 # let the audit writer commit its last batch

python3 - "$OUT" "$RSS_KB" "$DURATION" "$WORK/tollgate.db" "${CONCURRENCY[*]}" <<'PY'
import re, sys, platform, os, sqlite3
out, rss_kb, duration, db, conc = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], [int(c) for c in sys.argv[5].split()]

def parse(name):
    text = open(f"{out}/mcp-{name}.txt").read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    total = int(re.search(r"(\d+) requests in", text).group(1))
    def pct(p):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        v, unit = float(m.group(1)), m.group(2)
        return v * {"us": 1, "ms": 1000, "s": 1_000_000}[unit]
    errs = 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m: errs += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m: errs += sum(int(x) for x in m.groups())
    m = re.search(r"Bad MCP answers: (\d+)", text)
    errs += int(m.group(1)) if m else 0
    return rps, pct(50), pct(90), pct(99), errs, total

cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
systems = (("direct", "direct to upstream"), ("tollgate", "tollgate"), ("tollgate-sse", "tollgate, 2025-11-25 (SSE)"))
lines = [f"machine: {os.cpu_count()} cores, {cpu}, {platform.system()} {platform.release()}; wrk -t1 (on the same cores), {duration}s per row",
         "tools/call test_simple_text; protocol 2025-06-18 unless named; tollgate: key, policy, quota, audit on", "",
         "| scenario | system | req/s | p50 µs | p90 µs | p99 µs | errors |", "|---|---|---|---|---|---|---|"]
rows = {}
for c in conc:
    for key, label in systems:
        r = rows[key, c] = parse(f"{key}-c{c}")
        lines.append(f"| tools/call, c={c} | {label} | {r[0]:.0f} | {r[1]:.0f} | {r[2]:.0f} | {r[3]:.0f} | {r[4]} |")

# Every call through tollgate (checks, warm-ups, runs) should be in the audit chain.
sent = 3 + sum(parse(f"warmup-{k}")[5] for k in ("tollgate", "tollgate-sse")) \
    + sum(rows[k, c][5] for c in conc for k in ("tollgate", "tollgate-sse"))
con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
audited = con.execute("SELECT outcome, COUNT(*) FROM audit_log WHERE action = 'mcp.tools/call' GROUP BY outcome ORDER BY outcome").fetchall()
lines += ["", f"tollgate peak RSS: {rss_kb / 1024:.1f} MiB",
          f"audit chain: {sum(n for _, n in audited)} tools/call records ({', '.join(f'{o}: {n}' for o, n in audited) or 'none'}) "
          f"for {sent} calls answered to the clients (wrk stops with up to c calls in flight per run)", ""]

lines.append("| scenario | added p50 (target ≤ 150 µs) | added p99 (target ≤ 500 µs) | throughput vs direct |")
lines.append("|---|---|---|---|")
for c in conc:
    d = rows["direct", c]
    for key, label in systems[1:]:
        t = rows[key, c]
        ok = lambda v, lim: "met" if v <= lim else "missed"
        lines.append(f"| c={c}, {label} | {t[1] - d[1]:+.0f} µs ({ok(t[1] - d[1], 150)}) | {t[3] - d[3]:+.0f} µs ({ok(t[3] - d[3], 500)}) | {t[0] / d[0] if d[0] else 0:.0%} |")
if rows["direct", conc[0]][1] > 20_000:
    lines += ["", "WARNING: direct p50 is over 20 ms: a delayed-ACK stall (the upstream writes its SSE events without TCP_NODELAY), not a measurement of tollgate."]
report = "\n".join(lines)
print(report)
open(f"{out}/mcp-latest.md", "w").write(report + "\n")
PY
