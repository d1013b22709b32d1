# plugin/lib.sh — shell functions shared by plugin/*.sh and scripts/*.sh.
# Source it; it defines functions only.

# allspark_release_binary REPO
# Builds the release binary of the checkout at REPO (`cargo build --release`)
# and prints its path. Respects CARGO_TARGET_DIR and cargo's configured target dir.
allspark_release_binary() {
    local repo="$1" target_dir
    echo "cargo build --release (in $repo)" >&2
    (cd "$repo" && cargo build --release --bin allspark) >&2 || {
        echo "cargo build --release failed; fix the build (or pass --binary PATH)" >&2
        return 1
    }
    target_dir="${CARGO_TARGET_DIR:-}"
    if [[ -z "$target_dir" ]]; then
        target_dir="$(cd "$repo" && cargo metadata --no-deps --format-version 1 |
            sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
    fi
    echo "${target_dir:-$repo/target}/release/allspark"
}

# allspark_plugin_users PLUGIN
# Prints one line "CONTAINER (volume VOLUME)" for every running container that
# has a volume of the volume driver PLUGIN (NAME:TAG) mounted. Prints nothing
# when there is none (or the plugin does not exist).
allspark_plugin_users() {
    local plugin="$1" vol c
    while IFS= read -r vol; do
        [[ -n "$vol" ]] || continue
        while IFS= read -r c; do
            if [[ -n "$c" ]]; then echo "$c (volume $vol)"; fi
        done < <(docker ps --filter "volume=$vol" --format '{{.Names}}')
    done < <(docker volume ls -q --filter "driver=$plugin" 2>/dev/null)
}

# allspark_plugin_state_source PLUGIN
# Prints the host directory the plugin's "state" mount points at (its state
# root, /var/lib/allspark unless changed with `docker plugin set`).
allspark_plugin_state_source() {
    docker plugin inspect --format \
        '{{range .Settings.Mounts}}{{if eq .Name "state"}}{{.Source}}{{end}}{{end}}' "$1"
}

# allspark_require_docker SCRIPT
allspark_require_docker() {
    docker info >/dev/null 2>&1 || {
        echo "$1: the Docker daemon does not answer ('docker info' failed); start dockerd first" >&2
        return 1
    }
}

# allspark_ensure_root_propagation SCRIPT
# The host's / must be a shared (or slave) mount for `-v /:/host:rslave` (the
# agent container; Docker refuses it otherwise) and for the plugin's rslave
# host mount to see disks mounted later. systemd makes / shared at boot; on a
# machine booted without it, / is private: make it shared (only / itself, not
# recursively, so no other mount changes).
allspark_ensure_root_propagation() {
    local prop
    prop="$(findmnt -n -o PROPAGATION / 2>/dev/null || true)"
    case "$prop" in
        *shared*|*slave*) ;;
        *)
            echo "$1: the host's / is a ${prop:-private} mount; making it shared (mount --make-shared /), as systemd does at boot" >&2
            mount --make-shared / || {
                echo "$1: mount --make-shared / failed; run it as root" >&2
                return 1
            }
            ;;
    esac
}

# allspark_usage SCRIPT
# Prints the comment block at the top of SCRIPT (after the #! line), without "# ".
allspark_usage() {
    sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$1"
}
