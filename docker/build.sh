#!/bin/sh
# Build docker/Dockerfile and run the image, without a Docker daemon or registry:
#
#   docker/build.sh [WORK]          (root; WORK defaults to /var/tmp/relugate-docker)
#   TARGETARCH=arm64 docker/build.sh [WORK]
#
# 1. debootstrap --variant=minbase bookworm (with python3 and python3-venv) into
#    WORK/rootfs; for arm64 also an arm64 tree with python3 (arm64_rootfs.sh)
# 2. turn each into a local base image (buildah from scratch, copy the tree in, commit):
#    localhost/relugate-base:bookworm (amd64), localhost/relugate-base-arm64:bookworm
# 3. buildah bud --isolation chroot --build-arg BASE=localhost/relugate-base:bookworm
#    (arm64: TARGETARCH=arm64 and RUNTIME_BASE=the arm64 base; the build stage runs on
#    this machine and cross-compiles, the runtime stage only copies)
# 4. run the image's entrypoint (amd64: buildah run; arm64: chroot into the image's
#    file system under qemu-aarch64-static), call /health, /predict and /stats
#    (docker/smoke.py) and the HEALTHCHECK command, and print the image size.
# Buildah keeps its own storage in WORK (vfs driver: no overlay mounts needed).  apt-get
# installs buildah, debootstrap and qemu-user-static when missing.  REUSE_IMAGE=1 skips
# step 3 when the image exists.  The last line printed is a JSON summary.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
work=${1:-/var/tmp/relugate-docker}
arch=${TARGETARCH:-amd64}
base=localhost/relugate-base:bookworm
base_arm64=localhost/relugate-base-arm64:bookworm
image=${IMAGE:-localhost/relugate-edge:$arch}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
bah() { buildah --root "$work/storage" --runroot "$work/run" --storage-driver vfs "$@"; }
say() { echo "== $*" >&2; }
need() {  # need COMMAND PACKAGE
  command -v "$1" >/dev/null 2>&1 || {
    say "installing $2"
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2"
  }
}

[ "$(id -u)" = 0 ] || { echo "build.sh: run as root (debootstrap, chroot)" >&2; exit 2; }
case "$arch" in
  amd64) ;;
  arm64) need qemu-aarch64-static qemu-user-static ;;
  *) echo "build.sh: TARGETARCH must be amd64 or arm64, not $arch" >&2; exit 2 ;;
esac
need buildah buildah
need debootstrap debootstrap
mkdir -p "$work"
exec 9>"$work/.lock"
flock -n 9 || { echo "build.sh: another build is using $work" >&2; exit 2; }

# 1-2. base images, once
make_base() {  # make_base IMAGE ROOTFS ARCH
  say "base image $1 ($3)"
  ctr=$(bah from scratch)
  mnt=$(bah mount "$ctr")
  cp -a "$2/." "$mnt/"
  rm -rf "$mnt/var/lib/apt/lists/"* "$mnt/var/cache/apt/archives/"*.deb
  # this machine's CA bundle (minbase has none; a proxy that re-signs TLS needs its CA
  # for pip): what a site's own base image would carry
  ca=${HOST_CA_BUNDLE:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
  cert_env=
  if [ -f "$ca" ]; then
    mkdir -p "$mnt/etc/ssl/certs"
    cp "$ca" "$mnt/etc/ssl/certs/ca-certificates.crt"
    cert_env="--env PIP_CERT=/etc/ssl/certs/ca-certificates.crt"
    cert_env="$cert_env --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"
  fi
  bah umount "$ctr" >/dev/null
  # shellcheck disable=SC2086  # cert_env: options, split on purpose
  bah config --arch "$3" --os linux --cmd /bin/bash --env LANG=C.UTF-8 $cert_env \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$ctr"
  bah commit --quiet --format docker "$ctr" "$1" >/dev/null
  bah rm "$ctr" >/dev/null
}
if ! bah inspect --type image "$base" >/dev/null 2>&1; then
  if [ ! -x "$work/rootfs/usr/bin/python3" ]; then
    say "debootstrap bookworm into $work/rootfs"
    # a failed debootstrap can leave /proc (and /sys) mounted inside: unmount before rm
    awk -v r="$work/rootfs/" 'index($2, r) == 1 { print $2 }' /proc/mounts | sort -r |
      while read -r m; do umount "$m"; done
    rm -rf "$work/rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv bookworm "$work/rootfs" "$mirror"
  fi
  make_base "$base" "$work/rootfs" amd64
fi
if [ "$arch" = arm64 ] && ! bah inspect --type image "$base_arm64" >/dev/null 2>&1; then
  say "arm64 tree into $work/rootfs-arm64"
  sh "$here/arm64_rootfs.sh" "$work/rootfs-arm64" >&2
  make_base "$base_arm64" "$work/rootfs-arm64" arm64
fi

# 3. the image
start=$(date +%s)
if [ "${REUSE_IMAGE:-0}" = 1 ] && bah inspect --type image "$image" >/dev/null 2>&1; then
  say "reusing $image (REUSE_IMAGE=1)"
else
  say "buildah bud ($arch) -> $image"
  set -- --build-arg BASE="$base" --build-arg TARGETARCH="$arch"
  if [ "$arch" = arm64 ]; then
    # buildah 1.28 applies a stage's FROM --platform to the later stages' image lookup
    # too (the arm64 base is then "not known"): an empty BUILDPLATFORM leaves the build
    # stage on this machine's platform without it; the image takes the arm64 base's arch
    set -- "$@" --build-arg BUILDPLATFORM= --build-arg RUNTIME_BASE="$base_arm64"
  fi
  bah bud --isolation chroot --format docker --pull=never --layers=false "$@" \
    -f "$repo/docker/Dockerfile" -t "$image" "$repo" >&2
fi
build_s=$(( $(date +%s) - start ))
size=$(bah images --format '{{.Size}}' "$image" | head -n 1)
runtime_base=$base
[ "$arch" = arm64 ] && runtime_base=$base_arm64
base_size=$(bah images --format '{{.Size}}' "$runtime_base" | head -n 1)
say "image $image: $size (base $base_size), built in ${build_s}s"

# 4. run it on a free port, call it, stop it
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
ctr=$(bah from --pull=never "$image")
server=
mnt=
cleanup() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  if [ -n "$mnt" ]; then bah umount "$ctr" >/dev/null 2>&1 || true; fi
  bah rm "$ctr" >/dev/null 2>&1 || true
}
trap cleanup EXIT
mnt=$(bah mount "$ctr")
rm -rf "$work/bundle-$arch" && cp -r "$mnt/opt/relugate/bundle" "$work/bundle-$arch"  # as built
image_arch=$(bah inspect --type image --format '{{.Docker.Architecture}}' "$image")
config=$(bah inspect --type image "$image")  # JSON; its Docker config holds the run settings
# run_line ENTRY|HEALTH: the image's entrypoint + cmd, or its HEALTHCHECK, as one shell-quoted
# line that runs it in the container (arm64: env + chroot + qemu, binaries found in $mnt)
run_line() {
  printf '%s' "$config" | MNT="$mnt" ARCH="$arch" PORT="$port" python3 -c '
import json, os, shlex, sys
c = json.load(sys.stdin)["Docker"]["config"]
argv = c["Entrypoint"] + c["Cmd"] if sys.argv[1] == "ENTRY" else c["Healthcheck"]["Test"][1:]
if os.environ["ARCH"] == "amd64":
    print(shlex.join(argv))
    sys.exit()
mnt, exe = os.environ["MNT"], argv[0]
if "/" not in exe:
    dirs = ("/usr/local/bin", "/usr/bin", "/bin")
    exe = next(d + "/" + exe for d in dirs if os.path.exists(mnt + d + "/" + exe))
env = [*c["Env"], "RELUGATE_HOST=127.0.0.1", "RELUGATE_PORT=" + os.environ["PORT"]]
line = ["env", "-i", *env, "chroot", mnt, "/usr/bin/qemu-aarch64-static", exe, *argv[1:]]
print(shlex.join(line))
' "$1"
}
entry=$(run_line ENTRY)
check=$(run_line HEALTH)
if [ "$arch" = amd64 ]; then
  bah config --env RELUGATE_HOST=127.0.0.1 --env RELUGATE_PORT="$port" "$ctr"
  say "run: $entry (port $port)"
  # not through bah(): $! must be buildah's own pid (it forwards SIGTERM to the server)
  buildah --root "$work/storage" --runroot "$work/run" --storage-driver vfs \
    run --isolation chroot "$ctr" -- sh -c "exec $entry" >&2 &
  server=$!
else
  cp "$(command -v qemu-aarch64-static)" "$mnt/usr/bin/qemu-aarch64-static"
  say "run under qemu: $entry"
  eval "exec $entry" >&2 &  # env and chroot exec too: $! is qemu, which passes SIGTERM on
  server=$!
fi
summary=$(python3 "$here/smoke.py" "http://127.0.0.1:$port" "image=$image" "arch=$arch" \
  "image_arch=$image_arch" "size=$size" "base_size=$base_size" "build_s=$build_s" \
  "bundle=$work/bundle-$arch")
say "HEALTHCHECK: $check"
if [ "$arch" = amd64 ]; then
  bah run --isolation chroot "$ctr" -- sh -c "$check" >&2
else
  eval "$check" >&2
fi
say "healthcheck passed; endpoint answered"
echo "$summary"
