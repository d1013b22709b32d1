#!/usr/bin/env bash
# plugin/rootfs.sh BINARY DIR [--strip] [--mkfs-btrfs]
#
# Lays out a minimal root filesystem for the allspark binary in DIR: the binary
# as /allspark, every shared library `ldd` names (at the same absolute path) and
# the dynamic loader, plus the directories the managed plugin and the agent
# image need (/run/docker/plugins, /mnt/volumes, /tmp, /var/lib/allspark, /host,
# /backups/allspark, and the usual /proc /sys /dev /etc mount points).
# --strip removes debug info from the copied binary (the original is untouched);
# useful for debug builds, which are large. --mkfs-btrfs adds this machine's
# mkfs.btrfs (btrfs-progs) as /usr/sbin/mkfs.btrfs with its libraries: the
# managed plugin built with --loop-devices formats btrfs-image pools itself.
#
# Used by plugin/build.sh (managed plugin) and plugin/agent-image.sh (agent
# image). Can be sourced (defines allspark_rootfs) or run as a script.
set -euo pipefail

# allspark_rootfs_libs DIR EXE: copy every shared library `ldd EXE` names, and the
# loader, into DIR at the same absolute paths. `ldd` prints either
#   libfoo.so.1 => /lib/x86_64-linux-gnu/libfoo.so.1 (0x...)
#   /lib64/ld-linux-x86-64.so.2 (0x...)
#   linux-vdso.so.1 (0x...)            (no file: skipped)
# or "not a dynamic executable" / "statically linked" (nothing to copy).
# EXE is the copy in DIR, not the original: the copy is what ships, even if the
# original is rebuilt meanwhile.
allspark_rootfs_libs() {
    local dir="$1" exe="$2" ldd_out line path
    if ldd_out=$(ldd "$exe" 2>&1); then
        while IFS= read -r line; do
            path=""
            if [[ "$line" == *"=> not found"* ]]; then
                echo "rootfs.sh: $exe needs a library that is missing on this machine: $line" >&2
                return 1
            elif [[ "$line" =~ =\>\ (/[^ ]+) ]]; then
                path="${BASH_REMATCH[1]}"
            elif [[ "$line" =~ ^[[:space:]]*(/[^ ]+) ]]; then
                path="${BASH_REMATCH[1]}"
            fi
            [[ -n "$path" ]] || continue
            mkdir -p "$dir$(dirname "$path")"
            cp -L "$path" "$dir$path"
        done <<<"$ldd_out"
    elif [[ "$ldd_out" != *"not a dynamic executable"* && "$ldd_out" != *"statically linked"* ]]; then
        echo "rootfs.sh: ldd of $exe failed: $ldd_out" >&2
        return 1
    fi
}

allspark_rootfs() {
    local bin="" dir="" strip=0 mkfs=0 arg usage="usage: rootfs.sh BINARY DIR [--strip] [--mkfs-btrfs]"
    for arg in "$@"; do
        case "$arg" in
            --strip) strip=1 ;;
            --mkfs-btrfs) mkfs=1 ;;
            -*) echo "rootfs.sh: unknown option '$arg' ($usage)" >&2; return 2 ;;
            *) if [[ -z "$bin" ]]; then bin="$arg"; elif [[ -z "$dir" ]]; then dir="$arg"; else
                   echo "rootfs.sh: too many arguments ($usage)" >&2; return 2; fi ;;
        esac
    done
    if [[ -z "$bin" || -z "$dir" ]]; then
        echo "$usage" >&2
        return 2
    fi
    if [[ ! -x "$bin" ]]; then
        echo "rootfs.sh: '$bin' is not an executable file; build it first (cargo build --release)" >&2
        return 1
    fi

    mkdir -p "$dir"
    local d
    for d in run/docker/plugins mnt/volumes tmp var/lib/allspark host backups/allspark proc sys dev etc; do
        mkdir -p "$dir/$d"
    done
    chmod 1777 "$dir/tmp"

    cp -L "$bin" "$dir/allspark"
    chmod 0755 "$dir/allspark"
    if [[ "$strip" == 1 ]]; then
        if command -v strip >/dev/null 2>&1; then
            strip --strip-debug "$dir/allspark"
        else
            echo "rootfs.sh: --strip asked but 'strip' (binutils) is not installed; keeping debug info" >&2
        fi
    fi

    allspark_rootfs_libs "$dir" "$dir/allspark" || return 1
    if [[ "$mkfs" == 1 ]]; then
        local mkfs_bin
        mkfs_bin="$(command -v mkfs.btrfs)" || {
            echo "rootfs.sh: --mkfs-btrfs needs mkfs.btrfs on this machine (apt-get install btrfs-progs)" >&2
            return 1
        }
        mkdir -p "$dir/usr/sbin"
        cp -L "$mkfs_bin" "$dir/usr/sbin/mkfs.btrfs"
        allspark_rootfs_libs "$dir" "$dir/usr/sbin/mkfs.btrfs" || return 1
    fi

    # Prove the layout runs: a missing library shows here, not when dockerd starts the plugin.
    if [[ "$(id -u)" == 0 ]] && command -v chroot >/dev/null 2>&1; then
        local out
        if ! out=$(chroot "$dir" /allspark --version 2>&1); then
            echo "rootfs.sh: /allspark does not run inside $dir: $out" >&2
            return 1
        fi
        if [[ "$mkfs" == 1 ]] && ! out=$(chroot "$dir" /usr/sbin/mkfs.btrfs --version 2>&1); then
            echo "rootfs.sh: mkfs.btrfs does not run inside $dir: $out" >&2
            return 1
        fi
    fi

    # Name resolution files some libraries read; harmless when unused.
    [[ -e "$dir/etc/passwd" ]] || printf 'root:x:0:0:root:/:/allspark\n' >"$dir/etc/passwd"
    [[ -e "$dir/etc/group" ]] || printf 'root:x:0:\n' >"$dir/etc/group"
    [[ -e "$dir/etc/nsswitch.conf" ]] || printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$dir/etc/nsswitch.conf"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    allspark_rootfs "$@"
fi
