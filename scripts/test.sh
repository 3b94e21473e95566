#!/usr/bin/env bash
# The whole test suite, on a fresh machine: checks formatting and lints, builds, runs the Rust
# unit and integration tests, then the end-to-end suite driven by the official Python SDKs
# (installed, pinned, into ./.venv).
set -euo pipefail
cd "$(dirname "$0")/.."

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
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -r e2e/requirements.txt
TOLLGATE_BIN="$PWD/target/debug/tollgate" .venv/bin/python -m pytest e2e -q -p no:cacheprovider
