#!/usr/bin/env bash
# scripts/fuzz.sh [SECONDS] [TARGET…]
#
# Builds the cargo-fuzz targets of fuzz/ and runs each for SECONDS (default 30),
# as many at a time as there are cores, then prints executions, coverage and
# findings per target. Exits 1 if any target crashed, leaked, timed out or ran
# out of memory; the input that did it is in fuzz/artifacts/<target>/. Once the
# bug is fixed, copy that file into fuzz/regressions/<target>/: the plain test
# `cargo test --test hardening fuzz::` replays it (and every seed) forever.
#
# Targets (fuzz/src/harness.rs says what each checks):
#   requests     request bodies as the driver decodes them, options::parse
#   driver_api   call sequences through DriverApi over a Driver on a scratch root
#   state_files  manifest, spool event, volume record, index, usage readers
#   extract      archive extraction of arbitrary bytes
#   http         the plugin's HTTP/1.1 server on a Unix socket: raw bytes, and
#                well-formed calls (Content-Length or chunked) whose body must
#                arrive intact
#
# Stable Rust only: cargo-fuzz needs nightly flags, so RUSTC_BOOTSTRAP=1. It
# installs cargo-fuzz if missing. Each target runs as root in a private mount
# namespace where every mount except a scratch tmpfs and fuzz/ itself is
# read-only: a bug that writes outside the scratch directory cannot harm the
# host, it gets EROFS, which the harness reports as a finding.
#
# Environment: FUZZ_JOBS (parallel targets, default nproc), FUZZ_SANITIZER
# (default none: the code is safe Rust; `address` for the unsafe dependencies),
# FUZZ_RSS_MB (default 2048), FUZZ_CODEGEN_UNITS (default 16: a cold build takes
# ~3.5 min instead of ~5.5 on 2 cores).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd)
secs=${1:-30}
[[ $# -gt 0 ]] && shift
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(requests driver_api state_files extract http)
jobs=${FUZZ_JOBS:-$(nproc)}
sanitizer=${FUZZ_SANITIZER:-none}
cgu=${FUZZ_CODEGEN_UNITS:-16}
rss=${FUZZ_RSS_MB:-2048}
log() { echo "fuzz: $*" >&2; }

[[ $(id -u) -eq 0 ]] || { log "run as root (the harness needs a private mount namespace)"; exit 1; }
command -v unshare >/dev/null || { log "unshare (util-linux) is missing"; exit 1; }

export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi
# Same dependency versions as the main crate (fuzz/ is its own workspace; its lock is not tracked).
[[ -f fuzz/Cargo.lock ]] || cp Cargo.lock fuzz/Cargo.lock

# The fuzz crate builds into fuzz/target whatever the caller's CARGO_TARGET_DIR says.
unset CARGO_TARGET_DIR
started=$(date +%s)
log "building ${#targets[@]} target(s), sanitizer $sanitizer"
(cd fuzz && cargo fuzz build -s "$sanitizer" --codegen-units "$cgu")
built=$(date +%s)
bindir=fuzz/target/x86_64-unknown-linux-gnu/release
logs=fuzz/target/logs
mkdir -p "$logs"

declare -A opts=(
    [requests]="-max_len=4096 -dict=fuzz/dict/json.dict"
    [driver_api]="-max_len=2048"
    [state_files]="-max_len=16384 -dict=fuzz/dict/json.dict"
    [extract]="-max_len=65536"
    [http]="-max_len=4096 -dict=fuzz/dict/http.dict"
)
for t in "${targets[@]}"; do
    [[ -v "opts[$t]" ]] || { log "no libFuzzer options for target $t: add it to opts in scripts/fuzz.sh"; exit 1; }
done

# One target, sandboxed: private mount namespace, scratch tmpfs, everything else read-only.
run_one() {
    local t=$1
    local scratch
    scratch=$(mktemp -d /tmp/allspark-fuzz-scratch.XXXXXX)
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
    local corpora=("fuzz/corpus/$t" "fuzz/seeds/$t")
    [[ -d fuzz/regressions/$t ]] && corpora+=("fuzz/regressions/$t")
    local rc=0
    # shellcheck disable=SC2086
    SCRATCH=$scratch FUZZ=$repo/fuzz ALLSPARK_FUZZ_SCRATCH=$scratch \
        unshare --mount --propagation private -- bash -c '
        set -euo pipefail
        mount -t tmpfs -o size=1g,mode=0700 allspark-fuzz "$SCRATCH"
        mount --bind "$FUZZ" "$FUZZ"
        awk "{print \$5}" /proc/self/mountinfo | sort -u | while read -r m; do
            [[ $m == "$SCRATCH" || $m == "$FUZZ" ]] && continue
            mount -o remount,bind,ro "$m" 2>/dev/null || true
        done
        if touch /nonexistent-allspark-fuzz 2>/dev/null; then
            rm -f /nonexistent-allspark-fuzz
            echo "fuzz: the sandbox is not read-only; refusing to fuzz as root" >&2
            exit 1
        fi
        exec "$@"' fuzz-sandbox \
        "$bindir/$t" "${corpora[@]}" ${opts[$t]} \
        -max_total_time="$secs" -timeout=20 -rss_limit_mb="$rss" -malloc_limit_mb="$rss" \
        -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$t/" \
        >"$logs/$t.log" 2>&1 || rc=$?
    rmdir "$scratch" 2>/dev/null || true
    return $rc
}

declare -A pid_of status_of
running=0
for t in "${targets[@]}"; do
    [[ -x $bindir/$t ]] || { log "no such target: $t"; exit 1; }
    if [[ $running -ge $jobs ]]; then
        wait -n || true
        running=$((running - 1))
    fi
    log "running $t for ${secs}s"
    run_one "$t" &
    pid_of[$t]=$!
    running=$((running + 1))
done
failed=0
for t in "${targets[@]}"; do
    if wait "${pid_of[$t]}"; then status_of[$t]=ok; else status_of[$t]=FAILED; failed=1; fi
done

stat_of() { grep -m1 "^stat::$2:" "$logs/$1.log" | awk '{print $2}' || true; }
summary=fuzz/target/summary.txt
{
    printf '%-12s %8s %12s %9s %7s %7s %8s  %s\n' target seconds executions exec/s cov corpus rss_mb result
    total=0
    for t in "${targets[@]}"; do
        execs=$(stat_of "$t" number_of_executed_units)
        done_line=$(grep -E '^#[0-9]+[[:space:]]+(DONE|pulse|NEW|REDUCE)' "$logs/$t.log" | tail -1 || true)
        cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$done_line")
        corp=$(sed -n 's/.* corp: \([0-9]*\).*/\1/p' <<<"$done_line")
        printf '%-12s %8s %12s %9s %7s %7s %8s  %s\n' "$t" "$secs" "${execs:-?}" \
            "$(stat_of "$t" average_exec_per_sec)" "${cov:-?}" "${corp:-?}" \
            "$(stat_of "$t" peak_rss_mb)" "${status_of[$t]}"
        total=$((total + ${execs:-0}))
    done
    echo "total executions: $total; build $((built - started)) s, run $(($(date +%s) - built)) s"
} | tee "$summary"

if [[ $failed -ne 0 ]]; then
    for t in "${targets[@]}"; do
        [[ ${status_of[$t]} == ok ]] && continue
        log "$t FAILED; last lines of $logs/$t.log:"
        tail -n 40 "$logs/$t.log" >&2
        ls -l "fuzz/artifacts/$t/" >&2 || true
    done
    log "findings above: fix them, then copy each artifact into fuzz/regressions/<target>/"
    exit 1
fi
log "no findings"
