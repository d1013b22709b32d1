#!/usr/bin/env bash
# plugin/build.sh [options] [NAME[:TAG]]        (default NAME: allspark:latest)
#
# Builds the managed Docker plugin from this checkout and creates it in the
# local engine under NAME (`docker plugin create`), replacing an older plugin
# of that name.
#
#   --binary PATH   package this allspark binary instead of `cargo build --release`
#   --strip         strip debug info from the packaged copy (for debug builds)
#   --enable        enable the plugin after creating it (an enabled plugin that
#                   is replaced is always enabled again)
#   --force         replace the plugin even while running containers use its
#                   volumes (they keep their current mounts, but the new plugin
#                   starts without knowing about them; stop them instead)
#   --push          push NAME to its registry afterwards (`docker plugin push`;
#                   NAME must then be REGISTRY/NAME:TAG), see plugin/push.sh
#   --loop-devices  for btrfs-image pools: the plugin may use every device
#                   (config `linux.allowAllDevices`, which `docker plugin
#                   install` shows as `allow-all-devices`) and its rootfs gets
#                   mkfs.btrfs. Without it the plugin has no device beyond
#                   Docker's defaults (see plugin/README.md, Pools). A plugin
#                   built with it is only replaced by one built with it.
#
# Replacing a plugin: Docker cannot upgrade a plugin from a local directory,
# so the old plugin is removed and the new one created under the same name.
# Removing a volume plugin needs `docker plugin disable -f` whenever volumes of
# it exist. That is safe while no running container has one of its volumes
# mounted (volumes and their data live on the host, in the state directory, and
# the new plugin picks them up), so this script checks that first and REFUSES
# if a running container uses one of the plugin's volumes, naming the
# containers (override with --force). Settings made with `docker plugin set`
# (ALLSPARK_LOG, ALLSPARK_BIND_ROOTS, ALLSPARK_SNAPSHOT_WAIT, the state mount's
# source) are carried over to the new plugin.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
# shellcheck source=plugin/rootfs.sh
source "$here/rootfs.sh"
# shellcheck source=plugin/lib.sh
source "$here/lib.sh"

die() { echo "build.sh: $*" >&2; exit 1; }

binary="" strip="" enable=0 force=0 push=0 loops=0 name=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --binary) [[ $# -ge 2 ]] || die "--binary needs a path"; binary="$2"; shift 2 ;;
        --binary=*) binary="${1#--binary=}"; shift ;;
        --strip) strip="--strip"; shift ;;
        --enable) enable=1; shift ;;
        --force) force=1; shift ;;
        --push) push=1; shift ;;
        --loop-devices) loops=1; shift ;;
        -h|--help) allspark_usage "${BASH_SOURCE[0]}"; exit 0 ;;
        -*) die "unknown option '$1' (see --help)" ;;
        *) [[ -z "$name" ]] || die "only one NAME[:TAG] may be given (got '$name' and '$1')"; name="$1"; shift ;;
    esac
done
name="${name:-allspark:latest}"
# A tag is a ':' after the last '/' (a registry host may carry a port: 127.0.0.1:5000/x).
[[ "${name##*/}" == *:* ]] || name="$name:latest"

allspark_require_docker build.sh || exit 1
[[ -n "$binary" ]] || binary="$(allspark_release_binary "$repo")" || exit 1
[[ -x "$binary" ]] || die "no executable at '$binary'"

work="$(mktemp -d "${TMPDIR:-/tmp}/allspark-plugin.XXXXXX")"
trap 'rm -rf "$work"' EXIT
rootfs_extra=()
[[ "$loops" == 0 ]] || rootfs_extra=(--mkfs-btrfs)
allspark_rootfs "$binary" "$work/rootfs" $strip "${rootfs_extra[@]}"
cp "$here/config.json" "$work/config.json"
if [[ "$loops" == 1 ]]; then
    sed -i 's/^  "linux": {$/  "linux": {\n    "allowAllDevices": true,/' "$work/config.json"
    grep -q '^    "allowAllDevices": true,$' "$work/config.json" ||
        die "cannot add allowAllDevices to config.json (its \"linux\" block moved?)"
fi

# Settings worth carrying over to a replacement.
settable_env="ALLSPARK_LOG ALLSPARK_BIND_ROOTS ALLSPARK_SNAPSHOT_WAIT ALLSPARK_POOLS"
keep_settings=()
was_enabled=""
if was_enabled="$(docker plugin inspect --format '{{.Enabled}}' "$name" 2>/dev/null)"; then
    if [[ "$loops" == 0 && "$(docker plugin inspect --format '{{.Config.Linux.AllowAllDevices}}' "$name")" == true ]]; then
        die "refusing to replace plugin $name, built with --loop-devices (its btrfs-image pools need loop devices), by one without: pass --loop-devices"
    fi
    users=()
    while IFS= read -r u; do users+=("$u"); done < <(allspark_plugin_users "$name")
    if [[ ${#users[@]} -gt 0 ]]; then
        if [[ "$force" != 1 ]]; then
            printf 'build.sh: refusing to replace plugin %s: running containers use its volumes:\n' "$name" >&2
            printf '  %s\n' "${users[@]}" >&2
            echo "Stop them first (docker stop ... or docker-compose stop), run this again, then start them;" >&2
            echo "or pass --force to replace the plugin under them anyway." >&2
            exit 1
        fi
        echo "build.sh: --force: replacing $name although running containers use its volumes: ${users[*]}" >&2
    fi

    while IFS= read -r kv; do
        [[ -n "$kv" ]] || continue
        for k in $settable_env; do
            if [[ "$kv" == "$k="* ]]; then keep_settings+=("$kv"); fi
        done
    done < <(docker plugin inspect --format '{{range .Settings.Env}}{{println .}}{{end}}' "$name")
    state_source="$(allspark_plugin_state_source "$name")"
    if [[ -n "$state_source" ]]; then keep_settings+=("state.source=$state_source"); fi

    if [[ "$was_enabled" == true ]]; then
        # -f: volumes of the plugin hold references to it. Their records and data
        # live on the host and the new plugin serves them again.
        echo "build.sh: disabling $name (its volumes and their data stay on the host)" >&2
        docker plugin disable -f "$name" >/dev/null
    fi
    docker plugin rm -f "$name" >/dev/null
    echo "build.sh: removed the old $name" >&2
fi

echo "build.sh: docker plugin create $name" >&2
docker plugin create "$name" "$work" >/dev/null
if [[ ${#keep_settings[@]} -gt 0 ]]; then
    echo "build.sh: carrying over settings: ${keep_settings[*]}" >&2
    docker plugin set "$name" "${keep_settings[@]}"
fi

if [[ "$enable" == 1 || "$was_enabled" == true ]]; then
    # The state mount's source must exist on the host before the plugin starts.
    src="$(allspark_plugin_state_source "$name")"
    mkdir -p "${src:-/var/lib/allspark}"
    docker plugin enable "$name" >/dev/null || die "docker plugin enable $name failed; see the dockerd log for the plugin's output"
    echo "build.sh: enabled $name" >&2
fi

if [[ "$push" == 1 ]]; then
    echo "build.sh: docker plugin push $name" >&2
    docker plugin push "$name"
fi
echo "$name"
