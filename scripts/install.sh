#!/usr/bin/env bash
# scripts/install.sh [--managed [--loop-devices]] [--no-agent] [--force] [--binary PATH]
#
# Sets allspark up on this machine (run as root, from a checkout), and upgrades
# it in place when run again (every volume is kept):
#   1. builds the release binary (cargo build --release) and installs it as
#      /usr/local/bin/allspark: the CLI on the host (`allspark snapshot ls`,
#      `allspark usage`, …; its defaults are the same state root
#      /var/lib/allspark and backup root /backups/allspark);
#   2. runs the volume driver on the host under the driver name `allspark`
#      (compose files: `driver: allspark`): `allspark plugin`, a legacy socket
#      plugin on /run/docker/plugins/allspark.sock, state root /var/lib/allspark,
#      outside dockerd (restarting Docker does not take it down):
#        - PID 1 is systemd: the unit /etc/systemd/system/allspark-plugin.service
#          (plugin/allspark-plugin.service: Before=docker.service,
#          Restart=always), enabled and started;
#        - otherwise: plugin/allspark-plugin-supervise (starts the plugin again
#          when it exits), detached with setsid, log /var/log/allspark-plugin.log,
#          pid file /run/allspark-plugin.pid. Nothing starts it again after a
#          reboot: run this script again then.
#      An upgrade stops the old plugin gracefully (SIGTERM: it finishes the
#      calls in flight; running containers keep their mounts), swaps the
#      binary and starts it again. Settings: /etc/default/allspark-plugin
#      (ALLSPARK_LOG, ALLSPARK_BIND_ROOTS, ALLSPARK_SNAPSHOT_WAIT, …);
#   3. builds the agent image allspark-agent:latest (plugin/agent-image.sh);
#   4. (re)starts the agent container `allspark-agent`
#      (--restart unless-stopped, host network, the state root (rslave: pools
#      the driver mounts later, as fs=btrfs volumes, are seen), the backup
#      root /backups/allspark, the Docker socket and the host's / at /host).
#
#   --managed      instead of 2, create and enable the managed plugin
#                  allspark:latest (plugin/build.sh; an older allspark:latest
#                  is replaced, its settings and volumes kept; refused while
#                  running containers use its volumes). Docker names its
#                  driver `allspark:latest`, and docker-compose v1 compares
#                  names verbatim: compose files must say
#                  `driver: allspark:latest`
#   --loop-devices with --managed: build the plugin with loop devices
#                  (plugin/build.sh --loop-devices: allowAllDevices and
#                  mkfs.btrfs) so it serves btrfs-image pools; the host
#                  service has them already
#   --no-agent     skip 3 and 4 (e.g. when the agent runs as the allspark-agent
#                  service of compose/docker-compose.yml instead; never run both)
#   --force        with --managed: replace the plugin even while running
#                  containers use its volumes
#   --binary PATH  install this allspark binary instead of building one
#
# `allspark` and `allspark:latest` are two different drivers for Docker, and
# both would serve the same state root: the default install refuses while the
# managed plugin allspark:latest exists, --managed refuses while the host
# service is installed (scripts/uninstall.sh removes either, keeping data).
#
# Never deletes data: volumes live under the state root (/var/lib/allspark)
# and in their device= directories.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
# shellcheck source=plugin/lib.sh
source "$repo/plugin/lib.sh"

die() { echo "install.sh: $*" >&2; exit 1; }

plugin="allspark:latest"    # the managed plugin (--managed)
host_driver="allspark"      # the host service's driver name (its socket's name)
agent_image="allspark-agent:latest"
agent_name="allspark-agent"
backup_root="${ALLSPARK_BACKUP_ROOT:-/backups/allspark}"

managed=0 agent=1 force=() loops=() binary=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --managed) managed=1; shift ;;
        --no-agent) agent=0; shift ;;
        --force) force=(--force); shift ;;
        --loop-devices) loops=(--loop-devices); shift ;;
        --binary) [[ $# -ge 2 ]] || die "--binary needs a path"; binary="$2"; shift 2 ;;
        --binary=*) binary="${1#--binary=}"; shift ;;
        -h|--help) allspark_usage "${BASH_SOURCE[0]}"; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

[[ "$managed" == 1 || ${#loops[@]} == 0 ]] || die "--loop-devices goes with --managed (the host service reaches loop devices already)"
[[ "$(id -u)" == 0 ]] || die "run as root (sudo $0): the plugin and the agent manage /var/lib/allspark and mounts"
command -v docker >/dev/null || die "docker is not installed (apt-get install docker.io)"
allspark_require_docker install.sh || exit 1

# One driver name per machine: refuse to mix the two kinds of install.
if [[ "$managed" == 0 ]] && docker plugin inspect "$plugin" >/dev/null 2>&1; then
    n="$(docker volume ls -q --filter "driver=$plugin" 2>/dev/null | wc -l)"
    cat >&2 <<EOF
install.sh: refusing: the managed plugin $plugin is installed ($n volume(s)).
  scripts/install.sh runs the volume driver on the host under the driver name
  '$host_driver' (compose files: driver: $host_driver). The managed plugin's
  driver name is '$plugin' (compose files: driver: $plugin), and both
  would serve the same state root. Either:
    - keep the managed plugin (and upgrade it):   scripts/install.sh --managed
    - or remove it (data is kept):                scripts/uninstall.sh
      then run scripts/install.sh again. Docker's volumes of driver
      '$plugin' are not found under '$host_driver': take compose projects
      down first (docker-compose down), and create other such volumes again.
EOF
    exit 1
fi
if [[ "$managed" == 1 ]] && allspark_host_installed; then
    die "refusing --managed: the volume driver '$host_driver' (the host service of scripts/install.sh) is installed and serves the same state root; remove it first with scripts/uninstall.sh (data is kept), or run scripts/install.sh without --managed"
fi
if [[ "$managed" == 0 ]] && ! allspark_host_running && allspark_socket_answers "$ALLSPARK_HOST_SOCKET"; then
    holder="$(cat /var/lib/allspark/plugin.lock 2>/dev/null || true)"
    die "another process (pid ${holder:-unknown}, e.g. an 'allspark plugin' started by hand) serves $ALLSPARK_HOST_SOCKET; stop it first"
fi

if [[ -z "$binary" ]]; then
    command -v cargo >/dev/null || die "cargo is not installed: install a Rust toolchain, or pass --binary PATH"
    binary="$(allspark_release_binary "$repo")" || exit 1
fi
[[ -x "$binary" ]] || die "no executable at '$binary'"
echo "install.sh: installing $("$binary" --version 2>/dev/null || echo "$binary")"

mkdir -p /var/lib/allspark "$backup_root"
allspark_ensure_root_propagation install.sh || exit 1

# The binary is staged next to its final path and renamed into place (atomic)
# once the old plugin has stopped.
same_binary=0
if [[ "$(readlink -f "$binary")" == "$(readlink -f "$ALLSPARK_HOST_BIN" 2>/dev/null || true)" ]]; then
    same_binary=1
else
    mkdir -p "$(dirname "$ALLSPARK_HOST_BIN")"
    install -m 0755 "$binary" "$ALLSPARK_HOST_BIN.new"
fi
install_binary() {
    if [[ "$same_binary" == 0 ]]; then mv -f "$ALLSPARK_HOST_BIN.new" "$ALLSPARK_HOST_BIN"; fi
}

if [[ "$managed" == 1 ]]; then
    "$repo/plugin/build.sh" --binary "$binary" --enable "${force[@]}" "${loops[@]}" "$plugin" >/dev/null
    install_binary
    state_root="$(allspark_plugin_state_source "$plugin")"
    state_root="${state_root:-/var/lib/allspark}"
    echo "install.sh: managed plugin $plugin enabled (state root $state_root)"
    echo "install.sh: its driver name is '$plugin': compose files must say driver: $plugin"
    if [[ "$state_root" != /var/lib/allspark ]]; then
        echo "install.sh: the CLI on the host needs ALLSPARK_ROOT=$state_root"
    fi
else
    state_root=/var/lib/allspark
    allspark_host_stop install.sh
    install_binary
    mkdir -p "$(dirname "$ALLSPARK_HOST_SUPERVISOR")"
    install -m 0755 "$repo/plugin/allspark-plugin-supervise" "$ALLSPARK_HOST_SUPERVISOR"
    if allspark_systemd_booted; then
        install -m 0644 "$repo/plugin/allspark-plugin.service" "$ALLSPARK_HOST_UNIT"
        allspark_host_start install.sh || exit 1
        echo "install.sh: volume driver '$host_driver' running as the systemd service $ALLSPARK_HOST_UNIT_NAME (enabled: starts at boot, before docker.service)"
    else
        if [[ -e "$ALLSPARK_HOST_UNIT" ]]; then rm -f "$ALLSPARK_HOST_UNIT"; fi
        allspark_host_start install.sh || exit 1
        echo "install.sh: volume driver '$host_driver' running under $ALLSPARK_HOST_SUPERVISOR (pid $(allspark_host_supervisor_pid || echo '?'), pid file $ALLSPARK_HOST_PIDFILE, log $ALLSPARK_HOST_LOG)"
        echo "install.sh: NOTE: PID 1 is not systemd, so nothing starts the driver again after a reboot:"
        echo "install.sh:       run scripts/install.sh again after booting (best before Docker restarts containers)"
    fi
    echo "install.sh: socket $ALLSPARK_HOST_SOCKET, state root $state_root; compose files must say driver: $host_driver"
fi
echo "install.sh: CLI installed as $ALLSPARK_HOST_BIN (e.g. allspark volume ls)"
if [[ "$backup_root" != /backups/allspark ]]; then
    echo "install.sh: the CLI on the host needs ALLSPARK_BACKUP_ROOT=$backup_root"
fi

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
        -v "$state_root:/var/lib/allspark:rslave" \
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
