#!/bin/sh
# Build docker/Dockerfile and run the image, without a Docker daemon or registry:
#
#   docker/build.sh [WORK]          (root; WORK defaults to /var/tmp/relugate-docker)
#
# 1. debootstrap --variant=minbase bookworm (with python3 and python3-venv) into WORK/rootfs
# 2. turn it into the local base image localhost/relugate-base:bookworm (buildah from
#    scratch, copy the tree in, commit)
# 3. buildah bud --isolation chroot --build-arg BASE=localhost/relugate-base:bookworm
#    (TARGETARCH=arm64 in the environment cross-compiles the bundle for arm64)
# 4. run the image's entrypoint (buildah run), call /health, /predict and the HEALTHCHECK
#    command, and print the image size.
# Buildah keeps its own storage in WORK (vfs driver: no overlay mounts needed).  apt-get
# installs buildah and debootstrap when missing.  REUSE_IMAGE=1 skips step 3 when the
# image exists.  The last line printed is a JSON summary.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
work=${1:-/var/tmp/relugate-docker}
base=localhost/relugate-base:bookworm
image=${IMAGE:-localhost/relugate-edge:latest}
arch=${TARGETARCH:-amd64}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
bah() { buildah --root "$work/storage" --runroot "$work/run" --storage-driver vfs "$@"; }
say() { echo "== $*" >&2; }

[ "$(id -u)" = 0 ] || { echo "build.sh: run as root (debootstrap, chroot)" >&2; exit 2; }
for tool in buildah:buildah debootstrap:debootstrap; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || {
    say "installing ${tool#*:}"
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${tool#*:}"
  }
done
mkdir -p "$work"
exec 9>"$work/.lock"
flock -n 9 || { echo "build.sh: another build is using $work" >&2; exit 2; }

# 1-2. the base image, once
if ! bah inspect --type image "$base" >/dev/null 2>&1; then
  if [ ! -x "$work/rootfs/usr/bin/python3" ]; then
    say "debootstrap bookworm into $work/rootfs"
    # a failed debootstrap can leave /proc (and /sys) mounted inside: unmount before rm
    awk -v r="$work/rootfs/" 'index($2, r) == 1 { print $2 }' /proc/mounts | sort -r |
      while read -r m; do umount "$m"; done
    rm -rf "$work/rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv bookworm "$work/rootfs" "$mirror"
    rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
  fi
  say "base image $base"
  ctr=$(bah from scratch)
  mnt=$(bah mount "$ctr")
  cp -a "$work/rootfs/." "$mnt/"
  # this machine's CA bundle (minbase has none; a proxy that re-signs TLS needs its CA for
  # pip): what a site's own base image would carry
  ca=${HOST_CA_BUNDLE:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
  cert_env=
  if [ -f "$ca" ]; then
    mkdir -p "$mnt/etc/ssl/certs"
    cp "$ca" "$mnt/etc/ssl/certs/ca-certificates.crt"
    cert_env="--env PIP_CERT=/etc/ssl/certs/ca-certificates.crt --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"
  fi
  bah umount "$ctr" >/dev/null
  # shellcheck disable=SC2086  # cert_env: options, split on purpose
  bah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 $cert_env --cmd /bin/bash "$ctr"
  bah commit --quiet --format docker "$ctr" "$base" >/dev/null
  bah rm "$ctr" >/dev/null
fi

# 3. the image
start=$(date +%s)
if [ "${REUSE_IMAGE:-0}" = 1 ] && bah inspect --type image "$image" >/dev/null 2>&1; then
  say "reusing $image (REUSE_IMAGE=1)"
else
  say "buildah bud ($arch) -> $image"
  bah bud --isolation chroot --format docker --pull=never --layers=false \
    --build-arg BASE="$base" --build-arg TARGETARCH="$arch" \
    -f "$repo/docker/Dockerfile" -t "$image" "$repo" >&2
fi
build_s=$(( $(date +%s) - start ))
size=$(bah images --format '{{.Size}}' "$image" | head -n 1)
base_size=$(bah images --format '{{.Size}}' "$base" | head -n 1)
say "image $image: $size (base $base_size), built in ${build_s}s"

# 4. run it (an arm64 image needs qemu: checked by tests/test_aarch64.py instead)
if [ "$arch" != amd64 ]; then
  echo "{\"image\": \"$image\", \"arch\": \"$arch\", \"size\": \"$size\", \"base_size\": \"$base_size\", \"build_s\": $build_s}"
  exit 0
fi
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
ctr=$(bah from --pull=never "$image")
server=
cleanup() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  bah rm "$ctr" >/dev/null 2>&1 || true
}
trap cleanup EXIT
mnt=$(bah mount "$ctr")  # the bundle as built, for comparisons on the host
rm -rf "$work/bundle" && cp -r "$mnt/opt/relugate/bundle" "$work/bundle"
bah umount "$ctr" >/dev/null
bah config --env RELUGATE_HOST=127.0.0.1 --env RELUGATE_PORT="$port" "$ctr"
config=$(bah inspect --type image "$image")  # JSON; the Docker config holds the run settings
field() { printf '%s' "$config" | python3 -c "import json, shlex, sys; c = json.load(sys.stdin)['Docker']['config']; $1"; }
entry=$(field 'print(shlex.join(c["Entrypoint"] + c["Cmd"]))')
check=$(field 'print(shlex.join(c["Healthcheck"]["Test"][1:]))')
say "run: $entry(port $port)"
# not through bah(): $! must be buildah's own pid (it forwards SIGTERM to the server)
buildah --root "$work/storage" --runroot "$work/run" --storage-driver vfs \
  run --isolation chroot "$ctr" -- sh -c "exec $entry" >&2 &
server=$!
summary=$(python3 "$here/smoke.py" "http://127.0.0.1:$port" "image=$image" "arch=$arch" \
  "size=$size" "base_size=$base_size" "build_s=$build_s")
say "HEALTHCHECK $check"
bah run --isolation chroot "$ctr" -- sh -c "$check" >&2
say "healthcheck passed; endpoint answered"
echo "$summary"
