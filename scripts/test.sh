#!/usr/bin/env bash
# scripts/test.sh [cargo test args…]
#
# The project's one test command: formatting, lints, then every test.
#   cargo fmt --check
#   cargo clippy --all-targets -- -D warnings
#   cargo test --all-targets --no-fail-fast (every test binary runs; all
#   failures are listed), then cargo test --doc
# With arguments, the last step is `cargo test ARGS…` instead (e.g.
# scripts/test.sh --test docker managed::).
#
# End-to-end tests need a Docker daemon (and root). Without one they SKIP with a
# loud banner, unless ALLSPARK_REQUIRE_DOCKER is set, which makes them fail;
# it is exported whenever CI or ALLSPARK_REQUIRE_DOCKER is set.
# Test binaries run one after another (cargo's default), so the end-to-end
# tests of different files never drive dockerd at the same time.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

is_set() { [[ -n "${1:-}" && "$1" != 0 && "$1" != false ]]; }
if is_set "${CI:-}" || is_set "${ALLSPARK_REQUIRE_DOCKER:-}"; then
    export ALLSPARK_REQUIRE_DOCKER=1
    echo "test.sh: ALLSPARK_REQUIRE_DOCKER=1: tests that need Docker fail without a daemon" >&2
fi

step() { echo; echo "==> $*" >&2; "$@"; }

step cargo fmt --all -- --check
step cargo clippy --all-targets -- -D warnings
if [[ $# -gt 0 ]]; then
    step cargo test "$@"
else
    step cargo test --all-targets --no-fail-fast
    step cargo test --doc
fi
echo >&2
echo "test.sh: all checks passed" >&2
