#!/bin/sh
# An arm64 Debian bookworm root file system that runs the relugate runtime under
# qemu-user on any Linux host, without binfmt_misc and without Docker:
#   docker/aarch64_sysroot.sh ROOT
#   env PYTHONPATH=/opt/relugate/app:/opt/relugate/site \
#     chroot ROOT /usr/bin/qemu-aarch64-static /usr/bin/python3 -m relugate.runtime.serve BUNDLE
# arm64_rootfs.sh makes the Debian tree with python3, runtime_site.sh adds numpy and the
# TVM runtime (aarch64 wheels), runtime_tree.sh the relugate runtime package (refreshed
# on every call).  Needs root (chroot), debootstrap, qemu-user-static and pip; apt-get
# installs the first two when missing.
set -eu
root=${1:?usage: aarch64_sysroot.sh ROOT}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
command -v qemu-aarch64-static >/dev/null 2>&1 || {
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-user-static
}
sh "$here/arm64_rootfs.sh" "$root"
if [ ! -d "$root/opt/relugate/site/tvm" ]; then
  rm -rf "$root/opt/relugate/site.partial"
  sh "$here/runtime_site.sh" "$root/opt/relugate/site.partial" arm64 3.11
  mv "$root/opt/relugate/site.partial" "$root/opt/relugate/site"
fi
cp "$(command -v qemu-aarch64-static)" "$root/usr/bin/qemu-aarch64-static"
sh "$here/runtime_tree.sh" "$repo" "$root/opt/relugate/app"
echo "$root"
