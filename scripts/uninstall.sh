#!/usr/bin/env bash
# scripts/uninstall.sh [--force]
#
# Removes what scripts/install.sh set up: the agent container allspark-agent,
# its image allspark-agent:latest and the managed plugin allspark:latest.
# NEVER deletes data: the state root (/var/lib/allspark: volume records,
# managed volumes, snapshots), device= directories and /backups/allspark stay.
# Running scripts/install.sh again brings every volume back.
#
# Refused while running containers use volumes of the plugin (it names them);
# --force removes the plugin anyway (their mounts stay until they stop).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
# shellcheck source=plugin/lib.sh
source "$repo/plugin/lib.sh"

die() { echo "uninstall.sh: $*" >&2; exit 1; }

plugin="allspark:latest"
agent_image="allspark-agent:latest"
agent_name="allspark-agent"

force=0
case "${1:-}" in
    "") ;;
    --force) force=1 ;;
    -h|--help) allspark_usage "${BASH_SOURCE[0]}"; exit 0 ;;
    *) die "unknown argument '$1' (usage: uninstall.sh [--force])" ;;
esac

allspark_require_docker uninstall.sh || exit 1

state_root=""
if docker plugin inspect "$plugin" >/dev/null 2>&1; then
    users=()
    while IFS= read -r u; do users+=("$u"); done < <(allspark_plugin_users "$plugin")
    if [[ ${#users[@]} -gt 0 && "$force" != 1 ]]; then
        printf 'uninstall.sh: refusing: running containers use volumes of %s:\n' "$plugin" >&2
        printf '  %s\n' "${users[@]}" >&2
        die "stop them first (or pass --force)"
    fi
    state_root="$(allspark_plugin_state_source "$plugin")"
fi

if docker container inspect "$agent_name" >/dev/null 2>&1; then
    docker stop -t 30 "$agent_name" >/dev/null 2>&1 || true
    docker rm -f "$agent_name" >/dev/null
    echo "uninstall.sh: removed the agent container $agent_name"
fi
if docker image inspect "$agent_image" >/dev/null 2>&1; then
    docker image rm "$agent_image" >/dev/null
    echo "uninstall.sh: removed the image $agent_image"
fi

if [[ -n "$state_root" ]] || docker plugin inspect "$plugin" >/dev/null 2>&1; then
    if [[ "$(docker plugin inspect --format '{{.Enabled}}' "$plugin")" == true ]]; then
        docker plugin disable -f "$plugin" >/dev/null
    fi
    docker plugin rm -f "$plugin" >/dev/null
    echo "uninstall.sh: removed the plugin $plugin"
fi

echo "uninstall.sh: data kept: ${state_root:-/var/lib/allspark} (volumes, snapshots), device= directories, ${ALLSPARK_BACKUP_ROOT:-/backups/allspark}"
echo "uninstall.sh: Docker lists the volumes of driver $plugin again once scripts/install.sh has put the plugin back"
