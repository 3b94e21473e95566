#!/usr/bin/env bash
# tollgate against its peers: LiteLLM proxy and the Portkey gateway, installed here from their
# registries at pinned versions, all in front of the same fast mock upstream, with the mock
# itself as the physical baseline. One run:
#
#   bench/peers.sh                  # defaults: 10 s per measurement (LiteLLM rows 5 s)
#   DURATION=30 bench/peers.sh      # longer runs
#
# Environment: DURATION (s per row), LITELLM_DURATION (s per LiteLLM row, default min(DURATION, 5)),
# OPEN_LOOP_RATE (req/s, default 2000), PEERS (default "portkey,litellm"; empty for tollgate only),
# TOLLGATE_BIN_DIR (use the tollgate and tollgate-bench-upstream binaries there instead of building),
# OHA (an oha binary to use instead of the pinned one in bench/peers/.tools).
#
# Prints markdown tables and writes bench/out/peers.md and bench/out/peers.json (the input of
# bench/compare). Loopback only. See bench/README.md, "Against peers".
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS_DIR=bench/peers
OHA_VERSION=1.16.0
export DURATION=${DURATION:-10}
export PEERS=${PEERS-portkey,litellm}
mkdir -p bench/out

sha() { sha256sum "$1" | cut -d' ' -f1; }

if ! command -v wrk >/dev/null; then
  echo "installing wrk from Debian" >&2
  (apt-get install -y -qq wrk >/dev/null 2>&1) || (apt-get update -qq >/dev/null && apt-get install -y -qq wrk >/dev/null)
fi

# tollgate and the mock upstream.
if [ -n "${TOLLGATE_BIN_DIR:-}" ]; then
  BIN=$TOLLGATE_BIN_DIR
else
  cargo build --release --locked -p tollgate -p tollgate-testkit --bins >&2
  BIN=target/release
fi
for b in tollgate tollgate-bench-upstream; do
  [ -x "$BIN/$b" ] || { echo "no $BIN/$b" >&2; exit 1; }
done

# LiteLLM proxy from PyPI, pinned with its resolved dependencies.
if [[ ",$PEERS," == *,litellm,* ]]; then
  [ -x "$PEERS_DIR/.venv/bin/python" ] || python3 -m venv "$PEERS_DIR/.venv"
  if [ "$(cat "$PEERS_DIR/.venv/.requirements.sha256" 2>/dev/null)" != "$(sha "$PEERS_DIR/requirements.txt")" ]; then
    echo "installing LiteLLM into $PEERS_DIR/.venv" >&2
    "$PEERS_DIR/.venv/bin/pip" install --quiet --disable-pip-version-check -r "$PEERS_DIR/requirements.txt" >&2
    sha "$PEERS_DIR/requirements.txt" > "$PEERS_DIR/.venv/.requirements.sha256"
  fi
fi

# The Portkey gateway from npm, exactly as package-lock.json says. Its only install script is
# patch-package for the gateway's own development; there is nothing to patch in the package.
if [[ ",$PEERS," == *,portkey,* ]]; then
  command -v node >/dev/null || { echo "the Portkey gateway needs node (Debian: apt-get install nodejs npm)" >&2; exit 1; }
  if [ "$(cat "$PEERS_DIR/node_modules/.package-lock.sha256" 2>/dev/null)" != "$(sha "$PEERS_DIR/package-lock.json")" ]; then
    echo "installing the Portkey gateway into $PEERS_DIR/node_modules" >&2
    npm ci --prefix "$PEERS_DIR" --ignore-scripts --no-audit --no-fund --loglevel=error >&2
    sha "$PEERS_DIR/package-lock.json" > "$PEERS_DIR/node_modules/.package-lock.sha256"
  fi
fi

# oha (open-loop load with coordinated-omission correction), from crates.io, pinned.
OHA=${OHA:-$PEERS_DIR/.tools/bin/oha}
if ! "$OHA" --version 2>/dev/null | grep -q "$OHA_VERSION"; then
  OHA=$PEERS_DIR/.tools/bin/oha
  if ! "$OHA" --version 2>/dev/null | grep -q "$OHA_VERSION"; then
    echo "installing oha $OHA_VERSION from crates.io into $PEERS_DIR/.tools (compiles for a few minutes, once)" >&2
    nice -n 19 cargo install --locked --quiet "oha@$OHA_VERSION" --root "$PEERS_DIR/.tools" >&2
  fi
fi

exec python3 "$PEERS_DIR/harness.py" --bin-dir "$BIN" --oha "$OHA" --venv "$PEERS_DIR/.venv" --out bench/out
