#!/usr/bin/env bash
# scripts/uninstall.sh [--force]
#
# Removes what scripts/install.sh set up: the agent container allspark-agent,
# its image allspark-agent:latest, the host service of the volume driver
# `allspark` (stopped gracefully; its systemd unit allspark-plugin.service or
# its supervisor) and the CLI /usr/local/bin/allspark, and the managed plugin
# allspark:latest (scripts/install.sh --managed).
# NEVER deletes data: the state root (/var/lib/allspark: volume records,
# managed volumes, snapshots), device= directories and /backups/allspark stay
# (and /etc/default/allspark-plugin, /var/log/allspark-plugin.log).
# Running scripts/install.sh again brings every volume back.
#
# Refused while running containers use volumes of the driver (it names them);
# --force removes it anyway (their mounts stay until they stop).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
# shellcheck source=plugin/lib.sh
source "$repo/plugin/lib.sh"

die() { echo "uninstall.sh: $*" >&2; exit 1; }

plugin="allspark:latest"
host_driver="allspark"
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

# refuse_if_used DRIVER
refuse_if_used() {
    local users=() u
    while IFS= read -r u; do users+=("$u"); done < <(allspark_plugin_users "$1")
    if [[ ${#users[@]} -gt 0 && "$force" != 1 ]]; then
        printf 'uninstall.sh: refusing: running containers use volumes of the driver %s:\n' "$1" >&2
        printf '  %s\n' "${users[@]}" >&2
        die "stop them first (or pass --force)"
    fi
}

state_root=""
host=0
if allspark_host_installed; then
    host=1
    refuse_if_used "$host_driver"
fi
if docker plugin inspect "$plugin" >/dev/null 2>&1; then
    refuse_if_used "$plugin"
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

if [[ "$host" == 1 ]]; then
    allspark_host_stop uninstall.sh
    if [[ -e "$ALLSPARK_HOST_UNIT" ]]; then
        if allspark_systemd_booted; then
            systemctl disable --quiet "$ALLSPARK_HOST_UNIT_NAME" 2>/dev/null || true
        fi
        rm -f "$ALLSPARK_HOST_UNIT"
        if allspark_systemd_booted; then systemctl daemon-reload; fi
    fi
    rm -f "$ALLSPARK_HOST_SUPERVISOR" "$ALLSPARK_HOST_PIDFILE"
    rmdir "$(dirname "$ALLSPARK_HOST_SUPERVISOR")" 2>/dev/null || true
    echo "uninstall.sh: stopped and removed the host service of the volume driver '$host_driver'"
fi
if [[ -e "$ALLSPARK_HOST_BIN" ]]; then
    rm -f "$ALLSPARK_HOST_BIN" "$ALLSPARK_HOST_BIN.new"
    echo "uninstall.sh: removed the CLI $ALLSPARK_HOST_BIN"
fi

if [[ -n "$state_root" ]] || docker plugin inspect "$plugin" >/dev/null 2>&1; then
    if [[ "$(docker plugin inspect --format '{{.Enabled}}' "$plugin")" == true ]]; then
        docker plugin disable -f "$plugin" >/dev/null
    fi
    docker plugin rm -f "$plugin" >/dev/null
    echo "uninstall.sh: removed the managed plugin $plugin"
fi

echo "uninstall.sh: data kept: ${state_root:-/var/lib/allspark} (volumes, snapshots), device= directories, ${ALLSPARK_BACKUP_ROOT:-/backups/allspark}"
echo "uninstall.sh: Docker serves these volumes again once scripts/install.sh has put the driver back"
