#!/bin/sh
# An arm64 Debian bookworm root file system that runs the relugate runtime under
# qemu-user on any Linux host, without binfmt_misc and without Docker:
#   docker/aarch64_sysroot.sh ROOT
#   env PYTHONPATH=/opt/relugate/app:/opt/relugate/site \
#     chroot ROOT /usr/bin/qemu-aarch64-static /usr/bin/python3 -m relugate.runtime.serve BUNDLE
# debootstrap --foreign downloads python3 and its dependencies (arm64 .debs, about 30 s)
# and they are unpacked with dpkg-deb (the second stage would need to run arm64 code);
# runtime_site.sh adds numpy and the TVM runtime (aarch64 wheels); runtime_tree.sh the
# relugate runtime package (refreshed on every call).  Needs root (chroot), debootstrap,
# qemu-user-static and pip; installs the last two with apt-get when missing.
set -eu
root=${1:?usage: aarch64_sysroot.sh ROOT}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
for tool in debootstrap:debootstrap qemu-aarch64-static:qemu-user-static; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || {
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${tool#*:}"
  }
done
if [ ! -x "$root/usr/bin/python3" ]; then
  partial="$root.partial"
  rm -rf "$partial"
  debootstrap --arch=arm64 --foreign --variant=minbase --include=python3 bookworm "$partial" "$mirror"
  for deb in "$partial"/var/cache/apt/archives/*.deb; do dpkg-deb -x "$deb" "$partial"; done
  rm -f "$partial"/var/cache/apt/archives/*.deb
  rm -rf "$root"
  mv "$partial" "$root"
fi
if [ ! -d "$root/opt/relugate/site/tvm" ]; then
  rm -rf "$root/opt/relugate/site.partial"
  sh "$here/runtime_site.sh" "$root/opt/relugate/site.partial" arm64 3.11
  mv "$root/opt/relugate/site.partial" "$root/opt/relugate/site"
fi
cp "$(command -v qemu-aarch64-static)" "$root/usr/bin/qemu-aarch64-static"
sh "$here/runtime_tree.sh" "$repo" "$root/opt/relugate/app"
echo "$root"
