# plugin/lib.sh — shell functions shared by plugin/*.sh and scripts/*.sh.
# Source it; it defines functions and the host service's fixed paths only.

# The host service (scripts/install.sh's default): `allspark plugin` run on the
# host, outside dockerd, as a legacy socket plugin. Docker names the driver
# after the socket: `allspark` (a managed plugin's name carries a tag instead:
# `allspark:latest`).
ALLSPARK_HOST_BIN=/usr/local/bin/allspark
ALLSPARK_HOST_SOCKET=/run/docker/plugins/allspark.sock
ALLSPARK_HOST_UNIT_NAME=allspark-plugin.service
ALLSPARK_HOST_UNIT=/etc/systemd/system/allspark-plugin.service
ALLSPARK_HOST_SUPERVISOR=/usr/local/lib/allspark/allspark-plugin-supervise
ALLSPARK_HOST_PIDFILE=/run/allspark-plugin.pid
ALLSPARK_HOST_LOG=/var/log/allspark-plugin.log

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

# allspark_systemd_booted: true when PID 1 is systemd (sd_booted's test).
allspark_systemd_booted() {
    [[ -d /run/systemd/system ]]
}

# allspark_socket_answers SOCKET
# True when a volume driver answers /Plugin.Activate on the Unix socket SOCKET.
allspark_socket_answers() {
    local sock="$1"
    [[ -S "$sock" ]] || return 1
    if command -v curl >/dev/null 2>&1; then
        curl -fsS --max-time 5 --unix-socket "$sock" -X POST \
            http://plugin/Plugin.Activate 2>/dev/null | grep -q VolumeDriver
    elif command -v python3 >/dev/null 2>&1; then
        python3 - "$sock" <<'PY' 2>/dev/null
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
s.connect(sys.argv[1])
s.sendall(b"POST /Plugin.Activate HTTP/1.1\r\nHost: plugin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
data = b""
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
sys.exit(0 if b"VolumeDriver" in data else 1)
PY
    else
        return 0   # nothing to ask with: the socket exists
    fi
}

# allspark_host_supervisor_pid
# Prints the pid of the running allspark-plugin-supervise (from its pid file);
# fails when none runs.
allspark_host_supervisor_pid() {
    local pid
    pid="$(cat "$ALLSPARK_HOST_PIDFILE" 2>/dev/null)" || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q allspark-plugin-supervise || return 1
    echo "$pid"
}

# allspark_host_installed: true when the host service is set up (unit,
# supervisor or a running supervisor).
allspark_host_installed() {
    [[ -e "$ALLSPARK_HOST_UNIT" || -e "$ALLSPARK_HOST_SUPERVISOR" ]] ||
        allspark_host_supervisor_pid >/dev/null
}

# allspark_host_running: true when the host service runs (systemd unit active,
# or the supervisor alive).
allspark_host_running() {
    if allspark_systemd_booted && [[ -e "$ALLSPARK_HOST_UNIT" ]] &&
        systemctl is-active --quiet "$ALLSPARK_HOST_UNIT_NAME"; then
        return 0
    fi
    allspark_host_supervisor_pid >/dev/null
}

# allspark_host_stop SCRIPT
# Stops the host service gracefully: SIGTERM, the plugin finishes the calls in
# flight and removes its socket. Bind mounts of running containers stay (the
# next plugin finds them). Waits up to 40 s, then kills what is left.
allspark_host_stop() {
    local script="$1" pid child i
    if allspark_systemd_booted && [[ -e "$ALLSPARK_HOST_UNIT" ]] &&
        systemctl is-active --quiet "$ALLSPARK_HOST_UNIT_NAME"; then
        echo "$script: stopping $ALLSPARK_HOST_UNIT_NAME" >&2
        systemctl stop "$ALLSPARK_HOST_UNIT_NAME"
    fi
    if pid="$(allspark_host_supervisor_pid)"; then
        echo "$script: stopping the allspark plugin (supervisor pid $pid)" >&2
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 1 400); do
            [[ -d "/proc/$pid" ]] || break
            sleep 0.1
        done
        if [[ -d "/proc/$pid" ]]; then
            echo "$script: the plugin did not stop within 40 s; killing it" >&2
            for child in $(pgrep -P "$pid" 2>/dev/null); do kill -KILL "$child" 2>/dev/null || true; done
            kill -KILL "$pid" 2>/dev/null || true
        fi
        rm -f "$ALLSPARK_HOST_PIDFILE"
    fi
}

# allspark_host_start SCRIPT
# Starts the host service: the systemd unit (enabled, so it starts at boot
# before docker.service) when PID 1 is systemd, else the supervisor, detached
# with setsid from / in a clean environment, logging to $ALLSPARK_HOST_LOG. Waits until the driver
# answers on its socket (20 s at most).
allspark_host_start() {
    local script="$1" i
    if allspark_systemd_booted; then
        systemctl daemon-reload
        systemctl enable --quiet "$ALLSPARK_HOST_UNIT_NAME"
        systemctl start "$ALLSPARK_HOST_UNIT_NAME" || {
            journalctl -u "$ALLSPARK_HOST_UNIT_NAME" -n 20 --no-pager >&2 || true
            echo "$script: systemctl start $ALLSPARK_HOST_UNIT_NAME failed (its log is above)" >&2
            return 1
        }
    else
        # A clean environment, as systemd gives: settings come from
        # /etc/default/allspark-plugin, not from whoever ran the installer.
        (cd / && env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
            setsid -f "$ALLSPARK_HOST_SUPERVISOR" >>"$ALLSPARK_HOST_LOG" 2>&1 </dev/null)
    fi
    for i in $(seq 1 200); do
        allspark_socket_answers "$ALLSPARK_HOST_SOCKET" && return 0
        sleep 0.1
    done
    if allspark_systemd_booted; then
        journalctl -u "$ALLSPARK_HOST_UNIT_NAME" -n 20 --no-pager >&2 || true
    else
        tail -n 20 "$ALLSPARK_HOST_LOG" >&2 || true
    fi
    echo "$script: the allspark plugin does not answer on $ALLSPARK_HOST_SOCKET (its log is above)" >&2
    return 1
}
