#!/usr/bin/env bash
# scripts/install.sh [--no-agent] [--force] [--binary PATH]
#
# Sets allspark up on this machine (run as root, from a checkout), and upgrades
# it when run again:
#   1. builds the release binary (cargo build --release);
#   2. creates and enables the managed volume plugin allspark:latest
#      (plugin/build.sh; an older allspark:latest is replaced, its settings
#      and volumes kept; refused while running containers use its volumes);
#   3. builds the agent image allspark-agent:latest (plugin/agent-image.sh);
#   4. (re)starts the agent container `allspark-agent`
#      (--restart unless-stopped, host network, the state root, the backup
#      root /backups/allspark, the Docker socket and the host's / at /host).
#
#   --no-agent     skip 3 and 4 (e.g. when the agent runs as the allspark-agent
#                  service of compose/docker-compose.yml instead; never run both)
#   --force        replace the plugin even while running containers use its volumes
#   --binary PATH  install this allspark binary instead of building one
#
# Never deletes data: volumes live under the plugin's state root
# (/var/lib/allspark) and in their device= directories.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
# shellcheck source=plugin/lib.sh
source "$repo/plugin/lib.sh"

die() { echo "install.sh: $*" >&2; exit 1; }

plugin="allspark:latest"
agent_image="allspark-agent:latest"
agent_name="allspark-agent"
backup_root="${ALLSPARK_BACKUP_ROOT:-/backups/allspark}"

agent=1 force=() binary=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --no-agent) agent=0; shift ;;
        --force) force=(--force); shift ;;
        --binary) [[ $# -ge 2 ]] || die "--binary needs a path"; binary="$2"; shift 2 ;;
        --binary=*) binary="${1#--binary=}"; shift ;;
        -h|--help) allspark_usage "${BASH_SOURCE[0]}"; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

[[ "$(id -u)" == 0 ]] || die "run as root (sudo $0): the plugin and the agent manage /var/lib/allspark and mounts"
command -v docker >/dev/null || die "docker is not installed (apt-get install docker.io)"
allspark_require_docker install.sh || exit 1
if [[ -z "$binary" ]]; then
    command -v cargo >/dev/null || die "cargo is not installed: install a Rust toolchain, or pass --binary PATH"
    binary="$(allspark_release_binary "$repo")" || exit 1
fi
[[ -x "$binary" ]] || die "no executable at '$binary'"
echo "install.sh: installing $("$binary" --version 2>/dev/null || echo "$binary")"

mkdir -p /var/lib/allspark "$backup_root"
allspark_ensure_root_propagation install.sh || exit 1

"$repo/plugin/build.sh" --binary "$binary" --enable "${force[@]}" "$plugin" >/dev/null
state_root="$(allspark_plugin_state_source "$plugin")"
state_root="${state_root:-/var/lib/allspark}"
echo "install.sh: plugin $plugin enabled (state root $state_root); use it with driver: allspark"

if [[ "$agent" == 1 ]]; then
    "$repo/plugin/agent-image.sh" --binary "$binary" "$agent_image" >/dev/null
    old_image=""
    if docker container inspect "$agent_name" >/dev/null 2>&1; then
        old_image="$(docker container inspect --format '{{.Image}}' "$agent_name")"
        echo "install.sh: replacing the running $agent_name container"
        docker stop -t 30 "$agent_name" >/dev/null 2>&1 || true
        docker rm -f "$agent_name" >/dev/null
    fi
    docker run -d --name "$agent_name" \
        --restart unless-stopped \
        --network host \
        --label allspark.role=agent \
        -e ALLSPARK_ROOT=/var/lib/allspark \
        -e ALLSPARK_BACKUP_ROOT=/backups/allspark \
        -e ALLSPARK_HOST_PREFIX=/host \
        -e ALLSPARK_LOG="${ALLSPARK_LOG:-info}" \
        -e ALLSPARK_METRICS="${ALLSPARK_METRICS:-127.0.0.1:9477}" \
        -v /etc/localtime:/etc/localtime:ro \
        -v "$state_root:/var/lib/allspark" \
        -v "$backup_root:/backups/allspark" \
        -v /var/run/docker.sock:/var/run/docker.sock \
        -v /:/host:rslave \
        "$agent_image" >/dev/null
    sleep 2
    if [[ "$(docker container inspect -f '{{.State.Running}}' "$agent_name")" != true ]]; then
        docker logs --tail 20 "$agent_name" >&2 || true
        die "the agent container $agent_name stopped right after starting (its log is above)"
    fi
    if [[ -n "$old_image" && "$old_image" != "$(docker container inspect --format '{{.Image}}' "$agent_name")" ]]; then
        docker image rm "$old_image" >/dev/null 2>&1 || true   # the previous build, now unnamed
    fi
    echo "install.sh: agent container $agent_name running ($agent_image)"
else
    echo "install.sh: --no-agent: not starting the agent container"
fi
echo "install.sh: done"
