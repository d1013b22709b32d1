#!/usr/bin/env bash
# plugin/push.sh [build.sh options] REGISTRY/NAME[:TAG]
#
# Builds the managed plugin under the name REGISTRY/NAME:TAG (plugin/build.sh)
# and pushes it with `docker plugin push`. Install it elsewhere with
#   docker plugin install --grant-all-permissions --alias allspark REGISTRY/NAME:TAG
# Docker tags the alias: the driver name is then `allspark:latest`, and compose
# files must say `driver: allspark:latest` (docker-compose v1 compares names
# verbatim; `driver: allspark` is the name of scripts/install.sh's host service).
# The local copy under REGISTRY/NAME:TAG stays; remove it with `docker plugin rm`.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ref="${*: -1}"
if [[ $# -eq 0 || "$ref" == -* || "$ref" != */* ]]; then
    echo "usage: plugin/push.sh [--binary PATH] [--strip] [--loop-devices] REGISTRY/NAME[:TAG]" >&2
    echo "push.sh: the last argument must name a registry, e.g. 127.0.0.1:5000/allspark:latest" >&2
    exit 2
fi
exec "$here/build.sh" --push "$@"
