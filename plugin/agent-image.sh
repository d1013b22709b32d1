#!/usr/bin/env bash
# plugin/agent-image.sh [--binary PATH] [--strip] [IMAGE]     (default IMAGE: allspark-agent:latest)
#
# Builds the companion agent's image offline: FROM scratch holding the same
# root filesystem as the managed plugin (the allspark binary, its shared
# libraries and the loader, see plugin/rootfs.sh), entrypoint `/allspark agent`.
# No base image and no network are needed (`docker build` of a scratch image).
#
#   --binary PATH   package this allspark binary instead of `cargo build --release`
#   --strip         strip debug info from the packaged copy (for debug builds)
#
# Run it as scripts/install.sh does, or with the allspark-agent service of
# compose/docker-compose.yml.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
# shellcheck source=plugin/rootfs.sh
source "$here/rootfs.sh"
# shellcheck source=plugin/lib.sh
source "$here/lib.sh"

die() { echo "agent-image.sh: $*" >&2; exit 1; }

binary="" strip="" image=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --binary) [[ $# -ge 2 ]] || die "--binary needs a path"; binary="$2"; shift 2 ;;
        --binary=*) binary="${1#--binary=}"; shift ;;
        --strip) strip="--strip"; shift ;;
        -h|--help) allspark_usage "${BASH_SOURCE[0]}"; exit 0 ;;
        -*) die "unknown option '$1' (see --help)" ;;
        *) [[ -z "$image" ]] || die "only one IMAGE may be given (got '$image' and '$1')"; image="$1"; shift ;;
    esac
done
image="${image:-allspark-agent:latest}"

allspark_require_docker agent-image.sh || exit 1
[[ -n "$binary" ]] || binary="$(allspark_release_binary "$repo")" || exit 1
[[ -x "$binary" ]] || die "no executable at '$binary'"
version="$("$binary" --version 2>/dev/null | head -n1 || true)"

work="$(mktemp -d "${TMPDIR:-/tmp}/allspark-agent-image.XXXXXX")"
trap 'rm -rf "$work"' EXIT
allspark_rootfs "$binary" "$work/rootfs" $strip
cat >"$work/Dockerfile" <<EOF
FROM scratch
COPY rootfs/ /
ENV ALLSPARK_ROOT=/var/lib/allspark ALLSPARK_BACKUP_ROOT=/backups/allspark
LABEL org.opencontainers.image.title="allspark-agent" \\
      org.opencontainers.image.description="allspark companion agent: snapshots, backups, hooks, metrics" \\
      org.opencontainers.image.version="${version//\"/}"
ENTRYPOINT ["/allspark", "agent"]
EOF

# The classic builder: FROM scratch needs no base image and no network, and it
# does not depend on the buildx CLI plugin being installed.
old_id="$(docker image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)"
echo "agent-image.sh: docker build -t $image" >&2
if ! out="$(DOCKER_BUILDKIT=0 docker build --quiet -t "$image" "$work" 2>&1)"; then
    echo "$out" >&2
    die "docker build of $image failed"
fi
# The image this tag named before is left without a name: remove it, unless
# a container still uses it (then scripts/install.sh removes it after replacing
# the container).
new_id="$(docker image inspect --format '{{.Id}}' "$image")"
if [[ -n "$old_id" && "$old_id" != "$new_id" ]]; then
    docker image rm "$old_id" >/dev/null 2>&1 || true
fi
echo "$image"
