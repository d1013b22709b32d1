#!/usr/bin/env bash
# scripts/db-images.sh [--force] [--refresh]
#
# Builds, offline, two local Docker images that stand in for the official
# `postgres:15` and `redis:7` (no container registry is reachable from these
# machines, so they cannot be pulled; Debian's apt mirror is reachable):
#   allspark-test/postgres:15  PostgreSQL 15 from Debian bookworm (postgresql-15,
#       postgresql-client-15). Entrypoint like the official image's: honours
#       POSTGRES_PASSWORD (required unless POSTGRES_HOST_AUTH_METHOD=trust),
#       POSTGRES_USER (default postgres), POSTGRES_DB (default: the user),
#       PGDATA (default /var/lib/postgresql/data), POSTGRES_INITDB_ARGS,
#       POSTGRES_HOST_AUTH_METHOD (default scram-sha-256) and
#       /docker-entrypoint-initdb.d/*.sql|*.sql.gz|*.sh. When PGDATA has no
#       PG_VERSION it runs initdb as user postgres (UTF8, listen_addresses='*',
#       local + loopback trust, `host all all all scram-sha-256`) and creates the
#       database, then execs `postgres` as user postgres (uid 999, via setpriv).
#       STOPSIGNAL SIGINT (fast shutdown), as the official image.
#       psql, pg_dump, pg_dumpall, vacuumdb, pg_isready, postgres, initdb are on
#       PATH (/usr/lib/postgresql/15/bin first).
#   allspark-test/redis:7  redis-server 7.0 from Debian bookworm, WORKDIR /data.
#       `docker run IMG`, `IMG --appendonly yes` and `IMG redis-server
#       --appendonly yes` all run redis-server as user redis in /data, with
#       `--protected-mode no` added unless a config file or --protected-mode is
#       given (the official image's default). redis-cli is on PATH.
#
# How: `debootstrap --variant=minbase` of bookworm from the Debian mirror in
# /etc/apt/sources.list(.d) (override: ALLSPARK_DEBIAN_MIRROR=URL), one root
# filesystem for both images, shrunk (no apt caches, docs, man pages,
# translations, default cluster, LLVM JIT), then `docker load` of a hand-written
# image archive in which both images share that one layer. (`docker import`
# cannot set STOPSIGNAL; without SIGINT `docker stop` would be a smart shutdown
# that waits for every client to disconnect.)
#
# Cache: the images carry the label org.allspark.db-images.script=<sha256 of
# this script>; when both exist with the current hash the script does nothing
# (it says so). The debootstrap tree is kept in /var/cache/allspark-db-images
# (override: ALLSPARK_DB_IMAGES_CACHE), so a rebuild takes seconds, not minutes.
#   --force    rebuild the images (from the cached tree)
#   --refresh  also run debootstrap again (fresh packages from the mirror)
#   -h, --help this text
# Prints the two image names on stdout at the end. Needs root, dockerd and
# debootstrap (apt-get install debootstrap).
set -euo pipefail

SCRIPT="$(readlink -f "${BASH_SOURCE[0]}")"
REPO="$(cd "$(dirname "$SCRIPT")/.." && pwd)"
# shellcheck source=plugin/lib.sh
source "$REPO/plugin/lib.sh"

die() { echo "db-images.sh: $*" >&2; exit 1; }
log() { echo "db-images.sh: $*" >&2; }

PG_IMAGE=allspark-test/postgres:15
REDIS_IMAGE=allspark-test/redis:7
SUITE=bookworm
PACKAGES=(postgresql-15 postgresql-client-15 redis-server redis-tools)
LABEL=org.allspark.db-images.script
CACHE="${ALLSPARK_DB_IMAGES_CACHE:-/var/cache/allspark-db-images}"
PG_UID=999 # the official image's postgres uid/gid

force=0 refresh=0
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        --refresh) force=1 refresh=1 ;;
        -h|--help) allspark_usage "$SCRIPT"; exit 0 ;;
        *) die "unknown argument '$arg' (usage: db-images.sh [--force] [--refresh]; --help)" ;;
    esac
done

[[ $(id -u) == 0 ]] || die "must run as root (debootstrap, chroot and chown need it)"
allspark_require_docker db-images.sh || exit 1

script_hash="$(sha256sum "$SCRIPT" | cut -d' ' -f1)"

image_hash() { docker image inspect -f "{{index .Config.Labels \"$LABEL\"}}" "$1" 2>/dev/null || true; }

print_names() { echo "$PG_IMAGE"; echo "$REDIS_IMAGE"; }

if [[ $force == 0 && "$(image_hash "$PG_IMAGE")" == "$script_hash" &&
      "$(image_hash "$REDIS_IMAGE")" == "$script_hash" ]]; then
    log "$PG_IMAGE and $REDIS_IMAGE are up to date (script hash ${script_hash:0:12}); nothing to do (--force rebuilds)"
    print_names
    exit 0
fi

command -v debootstrap >/dev/null 2>&1 ||
    die "debootstrap is not installed (apt-get install debootstrap)"

mkdir -p "$CACHE"
# One build at a time (two CI jobs on one machine would share the cached tree).
exec 9>"$CACHE/lock"
flock 9

# debian_mirror: the first apt source of $SUITE on this machine (one-line
# sources.list format or deb822 .sources), else deb.debian.org.
debian_mirror() {
    if [[ -n "${ALLSPARK_DEBIAN_MIRROR:-}" ]]; then
        echo "$ALLSPARK_DEBIAN_MIRROR"
        return
    fi
    local f uri=""
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f "$f" ]] || continue
        uri="$(awk -v suite="$SUITE" '
            $1 == "deb" { sub(/\[[^]]*\][ \t]*/, ""); if ($3 == suite) { print $2; exit } }' "$f")"
        [[ -z "$uri" ]] || { echo "$uri"; return; }
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f "$f" ]] || continue
        uri="$(awk -v suite="$SUITE" 'BEGIN { RS = ""; FS = "\n" }
            {
                types = ""; uris = ""; suites = ""; enabled = "yes"
                for (i = 1; i <= NF; i++) {
                    if ($i ~ /^[ \t]*#/ || $i !~ /^[A-Za-z-]+:/) continue
                    k = tolower($i); sub(/:.*/, "", k)
                    v = $i; sub(/^[^:]*:[ \t]*/, "", v)
                    if (k == "types") types = v
                    else if (k == "uris") uris = v
                    else if (k == "suites") suites = v
                    else if (k == "enabled") enabled = tolower(v)
                }
                if (enabled == "no" || (" " types " ") !~ / deb / || (" " suites " ") !~ (" " suite " ")) next
                split(uris, u, /[ \t]+/); print u[1]; exit
            }' "$f")"
        [[ -z "$uri" ]] || { echo "$uri"; return; }
    done
    log "no apt source for $SUITE in /etc/apt; using http://deb.debian.org/debian"
    echo "http://deb.debian.org/debian"
}

# remove_tree DIR: rm -rf that never follows a leftover /proc or /sys mount.
remove_tree() {
    local dir="$1" m
    [[ -e "$dir" ]] || return 0
    while IFS= read -r m; do
        umount -l "$m" 2>/dev/null || true
    done < <(findmnt -rn -o TARGET | awk -v d="$dir" 'index($0, d "/") == 1' | sort -r)
    rm -rf --one-file-system "$dir"
}

# --- 1. the debootstrap tree (cached; keyed by suite, architecture, packages) ---
arch="$(dpkg --print-architecture)"
tree_key="$(echo "$SUITE $arch ${PACKAGES[*]}" | sha256sum | cut -c1-12)"
root="$CACHE/rootfs-$tree_key"
stamp="$root.ok"
start=$SECONDS

for old in "$CACHE"/rootfs-*; do
    [[ -e "$old" && "$old" != "$root" && "$old" != "$stamp" ]] || continue
    log "removing stale tree $old"
    if [[ -d "$old" ]]; then remove_tree "$old"; else rm -f "$old"; fi
done
if [[ $refresh == 1 || ! -f "$stamp" ]]; then
    rm -f "$stamp"
    remove_tree "$root"
    mirror="$(debian_mirror)"
    log "debootstrap --variant=minbase $SUITE from $mirror (about 2 minutes; log: $CACHE/debootstrap.log)"
    include="$(IFS=,; echo "${PACKAGES[*]}")"
    if ! debootstrap --variant=minbase --arch="$arch" --include="$include" \
        "$SUITE" "$root" "$mirror" >"$CACHE/debootstrap.log" 2>&1; then
        tail -n 20 "$CACHE/debootstrap.log" >&2
        remove_tree "$root"
        die "debootstrap failed (full log: $CACHE/debootstrap.log); is $mirror reachable? (ALLSPARK_DEBIAN_MIRROR=URL picks another)"
    fi
    touch "$stamp"
else
    log "reusing the debootstrap tree $root (--refresh runs debootstrap again)"
fi
for bin in usr/lib/postgresql/15/bin/postgres usr/lib/postgresql/15/bin/initdb \
    usr/lib/postgresql/15/bin/psql usr/bin/redis-server usr/bin/redis-cli usr/bin/setpriv; do
    [[ -x "$root/$bin" ]] || die "$root lacks /$bin; run again with --refresh"
done

# --- 2. shrink and customise the tree (idempotent: runs on every build) ---
log "shrinking and customising the tree"
rm -rf "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* \
    "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* \
    "$root"/usr/share/lintian "$root"/var/cache/debconf/*-old \
    "$root"/dev/* "$root"/run/adduser
find "$root/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
find "$root/var/log" -type f -exec truncate -s 0 {} +
# The LLVM JIT (~130 MB): postgres falls back to interpreting when the provider
# library is missing; nothing here needs JIT-compiled queries.
rm -rf "$root"/usr/lib/postgresql/15/lib/bitcode "$root"/usr/lib/postgresql/15/lib/llvmjit* \
    "$root"/usr/lib/*/libLLVM-*.so*
# The package's default cluster (/etc/postgresql/15/main, /var/lib/postgresql/15/main):
# the entrypoint makes its own in PGDATA.
rm -rf "$root"/etc/postgresql/15 "$root"/var/lib/postgresql/15

# postgres as uid/gid 999, as in the official image (data written by one image
# is owned right for the other).
old_uid="$(chroot "$root" id -u postgres)" old_gid="$(chroot "$root" id -g postgres)"
if [[ "$old_uid" != "$PG_UID" ]]; then
    chroot "$root" getent passwd "$PG_UID" >/dev/null && die "uid $PG_UID is taken in $root"
    chroot "$root" getent group "$PG_UID" >/dev/null && die "gid $PG_UID is taken in $root"
    chroot "$root" groupmod -g "$PG_UID" postgres
    chroot "$root" usermod -u "$PG_UID" -g "$PG_UID" postgres
    find "$root" -xdev -uid "$old_uid" -exec chown -h "$PG_UID" {} +
    find "$root" -xdev -gid "$old_gid" -exec chgrp -h "$PG_UID" {} +
fi

install -d -o "$PG_UID" -g "$PG_UID" -m 3777 "$root/run/postgresql"
install -d -o "$PG_UID" -g "$PG_UID" -m 1777 "$root/var/lib/postgresql/data"
install -d -m 0755 "$root/docker-entrypoint-initdb.d"
install -d -o "$(chroot "$root" id -u redis)" -g "$(chroot "$root" id -g redis)" -m 0755 "$root/data"

cat >"$root/usr/local/bin/postgres-entrypoint.sh" <<'EOF'
#!/bin/bash
# Entrypoint of allspark-test/postgres:15 (written by scripts/db-images.sh): the
# parts of the official postgres image's docker-entrypoint.sh the platform uses.
set -Eeuo pipefail

# `docker run IMAGE -c fsync=off` means `postgres -c fsync=off`.
if [[ $# -eq 0 || "${1:0:1}" == - ]]; then set -- postgres "$@"; fi
[[ "$1" == postgres ]] || exec "$@"
for a in "$@"; do
    case "$a" in -'?'|--help|--describe-config|-V|--version) exec "$@" ;; esac
done

export PGDATA="${PGDATA:-/var/lib/postgresql/data}"
export POSTGRES_USER="${POSTGRES_USER:-postgres}"
export POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"

if [[ $(id -u) == 0 ]]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    chown postgres:postgres /var/run/postgresql
    chmod 3777 /var/run/postgresql
    find "$PGDATA" \! -user postgres -exec chown postgres:postgres {} +
    chmod 700 "$PGDATA"
    HOME=/var/lib/postgresql exec setpriv --reuid=postgres --regid=postgres --init-groups "$BASH_SOURCE" "$@"
fi

if [[ ! -s "$PGDATA/PG_VERSION" ]]; then
    if [[ -z "${POSTGRES_PASSWORD:-}" && "${POSTGRES_HOST_AUTH_METHOD:-}" != trust ]]; then
        echo "postgres-entrypoint: the database is uninitialized and no superuser password is set:" >&2
        echo "  set POSTGRES_PASSWORD (or POSTGRES_HOST_AUTH_METHOD=trust to allow any connection without one)" >&2
        exit 1
    fi
    args=(--username="$POSTGRES_USER" --auth-local=trust --auth-host=trust)
    read -ra extra <<<"${POSTGRES_INITDB_ARGS:-}"
    if [[ -n "${POSTGRES_PASSWORD:-}" ]]; then
        # (the <(…) must be on initdb's own command line: its fd closes after the command)
        initdb "${args[@]}" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") "${extra[@]}"
    else
        initdb "${args[@]}" "${extra[@]}"
    fi
    printf "\nlisten_addresses = '*'\n" >>"$PGDATA/postgresql.conf"
    printf '\nhost all all all %s\n' "${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}" >>"$PGDATA/pg_hba.conf"

    # A server on the unix socket only, to create the database and run the init scripts.
    pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p ${PGPORT:-5432}" -w start
    psql=(psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc)
    if [[ "$POSTGRES_DB" != postgres ]]; then
        exists="$("${psql[@]}" --dbname postgres -tA --set db="$POSTGRES_DB" \
            <<<"SELECT 1 FROM pg_database WHERE datname = :'db';")"
        if [[ -z "$exists" ]]; then
            "${psql[@]}" --dbname postgres --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
        fi
    fi
    for f in /docker-entrypoint-initdb.d/*; do
        [[ -e "$f" ]] || continue
        case "$f" in
            *.sh) echo "postgres-entrypoint: running $f"; if [[ -x "$f" ]]; then "$f"; else . "$f"; fi ;;
            *.sql) echo "postgres-entrypoint: running $f"; "${psql[@]}" --dbname "$POSTGRES_DB" -f "$f" ;;
            *.sql.gz) echo "postgres-entrypoint: running $f"; gunzip -c "$f" | "${psql[@]}" --dbname "$POSTGRES_DB" ;;
            *) echo "postgres-entrypoint: ignoring $f" ;;
        esac
    done
    pg_ctl -D "$PGDATA" -m fast -w stop
    echo "postgres-entrypoint: PostgreSQL init process complete; ready for start up."
fi

exec "$@"
EOF

cat >"$root/usr/local/bin/redis-entrypoint.sh" <<'EOF'
#!/bin/sh
# Entrypoint of allspark-test/redis:7 (written by scripts/db-images.sh), like the
# official redis image's: `IMAGE`, `IMAGE --appendonly yes` and
# `IMAGE redis-server --appendonly yes` all run redis-server in the WORKDIR
# (/data) as user redis; any other command runs as given.
set -e

if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then
    set -- redis-server "$@"
fi
if [ "$1" = redis-server ]; then
    shift
    # The official image's redis-server defaults to protected-mode no; Debian's
    # to yes (which refuses clients from other containers). A config file (a
    # first argument not starting with -) or an explicit option wins.
    case " $* " in
        " -v "|" --version "|" -h "|" --help "|*" --test-memory "*|*" --protected-mode "*) ;;
        *) case "${1:--}" in -*) set -- --protected-mode no "$@" ;; esac ;;
    esac
    set -- redis-server "$@"
    if [ "$(id -u)" = 0 ]; then
        find . \! -user redis -exec chown redis '{}' +
        exec setpriv --reuid=redis --regid=redis --init-groups "$0" "$@"
    fi
    [ "$(umask)" != 0022 ] || umask 0077
fi
exec "$@"
EOF
chmod 0755 "$root/usr/local/bin/postgres-entrypoint.sh" "$root/usr/local/bin/redis-entrypoint.sh"
log "tree: $(du -sh --one-file-system "$root" | cut -f1)"

# --- 3. one layer, two image configs, one `docker load` ---
stage="$(mktemp -d "$CACHE/load.XXXXXX")"
trap 'rm -rf "$stage"' EXIT
mkdir "$stage/rootfs"
tar -C "$root" --numeric-owner -cf "$stage/rootfs/layer.tar" .
diff_id="sha256:$(sha256sum "$stage/rootfs/layer.tar" | cut -d' ' -f1)"
created="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
base_path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
labels="\"$LABEL\":\"$script_hash\",\"org.allspark.db-images.rootfs\":\"debootstrap --variant=minbase $SUITE ${PACKAGES[*]}\""

# image_config ENV_JSON ENTRYPOINT CMD WORKDIR EXTRA_JSON
image_config() {
    cat <<EOF
{"architecture":"$arch","os":"linux","created":"$created",
 "config":{"Env":$1,"Entrypoint":["$2"],"Cmd":["$3"],"WorkingDir":"$4","Labels":{$labels},$5},
 "rootfs":{"type":"layers","diff_ids":["$diff_id"]},
 "history":[{"created":"$created","created_by":"scripts/db-images.sh (debootstrap $SUITE: ${PACKAGES[*]})"}]}
EOF
}
image_config "[\"PATH=/usr/lib/postgresql/15/bin:$base_path\",\"PGDATA=/var/lib/postgresql/data\",\"PG_MAJOR=15\",\"LANG=C.UTF-8\"]" \
    postgres-entrypoint.sh postgres / \
    '"ExposedPorts":{"5432/tcp":{}},"Volumes":{"/var/lib/postgresql/data":{}},"StopSignal":"SIGINT"' \
    >"$stage/postgres.json"
image_config "[\"PATH=$base_path\"]" redis-entrypoint.sh redis-server /data \
    '"ExposedPorts":{"6379/tcp":{}},"Volumes":{"/data":{}}' >"$stage/redis.json"
cat >"$stage/manifest.json" <<EOF
[{"Config":"postgres.json","RepoTags":["$PG_IMAGE"],"Layers":["rootfs/layer.tar"]},
 {"Config":"redis.json","RepoTags":["$REDIS_IMAGE"],"Layers":["rootfs/layer.tar"]}]
EOF

old_ids=()
for img in "$PG_IMAGE" "$REDIS_IMAGE"; do
    id="$(docker image inspect -f '{{.Id}}' "$img" 2>/dev/null || true)"
    [[ -z "$id" ]] || old_ids+=("$id")
done
log "docker load ($(du -sh "$stage/rootfs/layer.tar" | cut -f1) layer, shared by both images)"
tar -C "$stage" -c manifest.json postgres.json redis.json rootfs | docker load >&2 ||
    die "docker load failed"
rm -rf "$stage"
# The previous images lost their tags; drop them unless a container still uses them.
for id in "${old_ids[@]}"; do
    if [[ -z "$(docker image inspect -f '{{join .RepoTags ","}}' "$id" 2>/dev/null)" ]]; then
        docker rmi "$id" >/dev/null 2>&1 || log "kept the previous image $id (a container uses it)"
    fi
done

# Smoke test: the binaries resolve through each image's PATH.
docker run --rm --entrypoint postgres "$PG_IMAGE" --version >/dev/null ||
    die "$PG_IMAGE does not run 'postgres --version'"
docker run --rm --entrypoint redis-server "$REDIS_IMAGE" --version >/dev/null ||
    die "$REDIS_IMAGE does not run 'redis-server --version'"
log "built $PG_IMAGE and $REDIS_IMAGE in $((SECONDS - start)) s ($(docker image inspect -f '{{.Size}}' "$PG_IMAGE" | numfmt --to=iec) each, one shared layer)"
print_names
