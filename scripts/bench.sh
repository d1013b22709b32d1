#!/usr/bin/env bash
# scripts/bench.sh [--quick] [--only docker,socket,snapshots,pool] [--out DIR] [--nice N] [--publish]
#                  [--ws-bytes SIZE] [--ws-files N]
#
# allspark against Docker's `local` driver, GNU tar (czf, pigz, zstd) and restic,
# in one run (release build): prints a table with every target MET or MISSED and
# writes bench-results/latest.{md,json}.
#   (default)   full run: 10 000 volumes, a 1 GiB / 20 000-file workspace and a
#               200 000-file tree, ~30-40 min on 2 cores
#   --quick     smoke check: 2 000 volumes, 100 MiB / 2 000 files and 20 000
#               files, fewer runs, ~5 min
#   --only L    comma list of sections: docker, socket, snapshots, pool (a btrfs-image
#               pool: snapshot on stop and clones vs the archive path; needs mkfs.btrfs)
#   --ws-bytes SIZE, --ws-files N
#               the generated workspace of the snapshots and pool sections (default
#               1G and 20 000 files), e.g. the 10 GB snapshot-on-stop figure:
#               --only pool --ws-bytes 10G --ws-files 200000 (about 50 GB free and
#               13 min: from 4 GB up the volumes keep 10 snapshots, two archive chains)
#   --out DIR   where the reports go (default bench-results/)
#   --publish   afterwards, copy the report into docs/benchmarks.md (between the
#               bench markers) and docs/benchmarks.json
#   --nice N    run the bench and every contender at priority N (e.g. -10) on a
#               machine shared with other work (dockerd keeps its own)
# Needs root (real bind mounts); the Docker sections need a running dockerd
# and are reported as skipped without one. Scratch space: ALLSPARK_BENCH_DIR
# (default /var/tmp; a full run needs about 5 GB free there).
# Benchmarks never fail because something is slow: missed targets are
# reported, the exit status is 0.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

publish=0
args=()
out=bench-results
while [[ $# -gt 0 ]]; do
    case "$1" in
        --publish) publish=1 ;;
        --nice) export ALLSPARK_BENCH_NICE="$2"; shift ;;
        --out) out="$2"; args+=(--out "$2"); shift ;;
        --ws-bytes|--ws-files) args+=("$1" "$2"); shift ;;
        --quick|--only) args+=("$1"); [[ "$1" == --only ]] && { args+=("$2"); shift; } ;;
        -h|--help) sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

if [[ $(id -u) != 0 ]]; then
    echo "bench.sh: run as root (the plugin makes real bind mounts)" >&2
    exit 1
fi
for tool in tar gzip pigz zstd restic; do
    command -v "$tool" >/dev/null || { echo "bench.sh: $tool is missing (apt-get install -y $tool)" >&2; exit 1; }
done
[[ -x /usr/bin/time ]] || echo "bench.sh: /usr/bin/time is missing (apt-get install -y time): CLI peak memory will show 0" >&2

cargo bench --bench allspark -- "${args[@]}"

if [[ $publish == 1 ]]; then
    doc=docs/benchmarks.md
    [[ -f $doc ]] || { echo "bench.sh: $doc is missing" >&2; exit 1; }
    grep -q '<!-- bench:begin -->' "$doc" && grep -q '<!-- bench:end -->' "$doc" \
        || { echo "bench.sh: $doc has no <!-- bench:begin/end --> markers" >&2; exit 1; }
    # The report without its own top-level heading, between the markers.
    awk -v report="$out/latest.md" '
        /<!-- bench:begin -->/ { print; while ((getline line < report) > 0) if (line !~ /^## allspark benchmarks$/) print line; skip = 1; next }
        /<!-- bench:end -->/   { skip = 0 }
        !skip' "$doc" > "$doc.tmp"
    mv "$doc.tmp" "$doc"
    cp "$out/latest.json" docs/benchmarks.json
    echo "bench.sh: published the report into $doc and docs/benchmarks.json" >&2
fi
