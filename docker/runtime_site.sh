#!/bin/sh
# Install the runtime's Python packages for one platform into a folder, without running
# anything of that platform (so an arm64 image needs no emulation):
#   docker/runtime_site.sh DEST [amd64|arm64] [PYTHON_VERSION]
# numpy, typing_extensions, and the apache-tvm wheel minus what only compiles code:
# libtvm_compiler.so (about 250 MB; tvm.runtime and the relax VirtualMachine load an
# exported library without it) and the C/C++ headers and sources.  Uses the pip of
# $PYTHON (default python3).
set -eu
dest=${1:?usage: runtime_site.sh DEST [amd64|arm64] [PYTHON_VERSION]}
arch=${2:-amd64}
pybin=${PYTHON:-python3}
pyver=${3:-$("$pybin" -c 'import sys; print("%d.%d" % sys.version_info[:2])')}
case "$arch" in
  amd64 | x86_64) m=x86_64 ;;
  arm64 | aarch64) m=aarch64 ;;
  *) echo "runtime_site.sh: unknown architecture $arch (amd64 or arm64)" >&2; exit 2 ;;
esac
"$pybin" -m pip install --quiet --no-deps --only-binary=:all: --target "$dest" \
  --implementation cp --python-version "$pyver" \
  --platform "manylinux_2_28_$m" --platform "manylinux_2_27_$m" \
  --platform "manylinux_2_17_$m" --platform "manylinux2014_$m" \
  "numpy>=1.26,<3" "typing_extensions>=4.5" \
  "apache-tvm==0.27.0.post1" "apache-tvm-ffi==0.1.14.post1"
rm -rf "$dest/tvm/lib/libtvm_compiler.so" "$dest/tvm/3rdparty" "$dest/tvm/src" \
  "$dest/tvm/include" "$dest/tvm_ffi/3rdparty" "$dest/tvm_ffi/include" "$dest/tvm_ffi/src" \
  "$dest/bin"
find "$dest" -name __pycache__ -prune -exec rm -rf {} +
