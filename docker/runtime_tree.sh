#!/bin/sh
# Copy the relugate runtime package, and nothing of the compiler but its error classes,
# from the repository into DEST (a folder for PYTHONPATH):
#   docker/runtime_tree.sh REPO DEST
# DEST/relugate/{__init__.py, runtime/*.py, compiler/__init__.py (empty), compiler/errors.py}
set -eu
repo=${1:?usage: runtime_tree.sh REPO DEST}
dest=${2:?usage: runtime_tree.sh REPO DEST}
rm -rf "$dest/relugate"
mkdir -p "$dest/relugate/runtime" "$dest/relugate/compiler"
cp "$repo/relugate/__init__.py" "$dest/relugate/"
cp "$repo"/runtime/*.py "$dest/relugate/runtime/"
: > "$dest/relugate/compiler/__init__.py"
cp "$repo/compiler/errors.py" "$dest/relugate/compiler/"
