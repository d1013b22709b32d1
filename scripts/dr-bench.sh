#!/usr/bin/env bash
# Disaster-recovery timing (docs/benchmarks.md "Disaster recovery from a remote"):
# a mixed corpus in one volume (/usr/share/doc, the Python stdlib, 30 MB of
# random bytes, as in shared/notes/machine.md), backed up and pushed to a
# moto_server S3 endpoint on 127.0.0.1 (age-encrypted), then the state root and
# the backup root are wiped and `allspark dr restore` rebuilds the volume; the
# restored tree is compared with the original.
#
#   sudo scripts/dr-bench.sh [path/to/allspark]     (default target/release/allspark)
#
# Needs root, curl, moto_server and boto3 (pip install 'moto[server]'), age-keygen.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN=$(realpath "${1:-target/release/allspark}")
W=$(mktemp -d /var/tmp/allspark-drbench.XXXXXX)
root=$W/root
broot=$W/backups
sock=$W/plugin.sock
moto_pid= plugin_pid=

cleanup() {
    [[ -n $plugin_pid ]] && kill "$plugin_pid" 2>/dev/null && wait "$plugin_pid" 2>/dev/null
    [[ -n $moto_pid ]] && kill "$moto_pid" 2>/dev/null && wait "$moto_pid" 2>/dev/null
    rm -rf "$W"
}
trap cleanup EXIT
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { print b - a }'; }

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
moto_server -H 127.0.0.1 -p "$port" >"$W/moto.log" 2>&1 &
moto_pid=$!
endpoint=http://127.0.0.1:$port
for _ in $(seq 100); do curl -s "$endpoint" >/dev/null && break; sleep 0.1; done
python3 -c "import boto3; boto3.client('s3', endpoint_url='$endpoint', region_name='us-east-1', aws_access_key_id='k', aws_secret_access_key='s').create_bucket(Bucket='drbench')"

start_plugin() {
    "$BIN" --root "$root" plugin --socket "$sock" >>"$W/plugin.log" 2>&1 &
    plugin_pid=$!
    for _ in $(seq 100); do [[ -S $sock ]] && return; sleep 0.1; done
    echo "the plugin did not start" >&2; exit 1
}
start_plugin
curl -sf --unix-socket "$sock" -XPOST http://p/VolumeDriver.Create -d '{"Name":"workspace","Opts":{"backup":"high"}}' >/dev/null
data=$root/volumes/workspace/data
mkdir -p "$data/doc" "$data/python" "$data/random"
cp -a /usr/share/doc/. "$data/doc/"
cp -a "$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')/." "$data/python/"
head -c $((30 << 20)) /dev/urandom >"$data/random/blob"
cp -a "$data" "$W/original"
bytes=$(du -sb "$data" | cut -f1)
files=$(find "$data" -type f | wc -l)

age-keygen -o "$W/key.txt" 2>/dev/null
chmod 600 "$W/key.txt"
printf 'aws_access_key_id=k\naws_secret_access_key=s\n' >"$W/creds"
chmod 600 "$W/creds"
pub=$(sed -n 's/^# public key: //p' "$W/key.txt")
add_remote() {
    "$BIN" --root "$root" remote add offsite --endpoint "$endpoint" --bucket drbench --path-style \
        --credentials-file "$W/creds" --age-recipient "$pub" >/dev/null 2>&1
}
add_remote
export ALLSPARK_BACKUP_ROOT=$broot ALLSPARK_DOCKER=unix:///nonexistent.sock ALLSPARK_LOG=warn
sync
t=$(now)
"$BIN" --root "$root" backup run daily --remote offsite >"$W/backup.log" 2>&1 || true
backup_push=$(since "$t")
echo "backup + push: $backup_push s" >&2
grep -q '1 backup(s) pushed' "$W/backup.log" || { cat "$W/backup.log"; exit 1; }
archive=$(ls "$broot"/daily/*/workspace.tar.*)
stored=$(stat -c %s "$archive")
cp "$archive" "$W/archive"
archive=$W/archive

# The host is lost.
kill "$plugin_pid"; wait "$plugin_pid" 2>/dev/null || true
rm -rf "$root" "$broot"
# Baseline: extracting the same archive with GNU tar, no download, no decryption, after the
# same deletions (ext4 pays for recently deleted inodes when it allocates new ones).
mkdir "$W/tar-x"
sync
t=$(now)
tar -xf "$archive" -C "$W/tar-x"   # gzip or zstd, detected by GNU tar
tar_x=$(since "$t")
rm -rf "$W/tar-x"

start_plugin
add_remote
sync
t=$(now)
"$BIN" --root "$root" dr restore --from offsite --identity "$W/key.txt" >"$W/dr.log" 2>&1
dr_wall=$(since "$t")
echo "dr restore: $dr_wall s" >&2
diff -r --no-dereference "$W/original" "$data" >/dev/null || { echo "the restored tree differs" >&2; exit 1; }

printf 'corpus: %d files, %d bytes; archive %d bytes (age-encrypted on the remote)\n' "$files" "$bytes" "$stored"
printf 'backup run daily --remote (archive + encrypt + upload): %.2f s\n' "$backup_push"
printf 'tar -xf of the same archive (local, baseline):           %.2f s\n' "$tar_x"
printf 'dr restore, wall clock (download + decrypt + checks + records + extract + swap): %.2f s\n' "$dr_wall"
grep '^recovered in' "$W/dr.log"
