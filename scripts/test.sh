#!/usr/bin/env bash
# Hone's test command: formatting, lints, and every test (unit, golden-fixture, CLI end-to-end).
# Tests that need the real default model use models/ (fetched here; under CI its absence is a failure).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch-model.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
