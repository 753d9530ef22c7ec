#!/bin/sh
# An arm64 Debian bookworm root file system with python3, made on any host without
# running arm64 code: debootstrap --foreign downloads the packages (about 30 s) and
# dpkg-deb unpacks them (the second stage, which configures them, would need arm64
# execution).  Enough to run python3 under qemu-user or as an image's base layer.
#   docker/arm64_rootfs.sh ROOT
set -eu
root=${1:?usage: arm64_rootfs.sh ROOT}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
[ -x "$root/usr/bin/python3" ] && exit 0
command -v debootstrap >/dev/null 2>&1 || {
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap
}
partial="$root.partial"
rm -rf "$partial"
debootstrap --arch=arm64 --foreign --variant=minbase --include=python3 bookworm "$partial" "$mirror"
for deb in "$partial"/var/cache/apt/archives/*.deb; do dpkg-deb -x "$deb" "$partial"; done
rm -rf "$partial"/var/cache/apt/archives/*.deb "$partial/debootstrap"
rm -rf "$root"
mv "$partial" "$root"
