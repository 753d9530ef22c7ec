#!/usr/bin/env bash
# Create the reference-verifier venv (Marabou via maraboupy, pinned) at $1
# (default /tmp/refvenv).  Needs python3.11 (maraboupy 2.0.0 ships cp38..cp312
# manylinux wheels) and PyPI; no torch, no compiler.  Idempotent.
set -euo pipefail
VENV="${1:-/tmp/refvenv}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
"$PY" -m venv "$VENV"
# Every package pinned, --no-deps: the install is the same every time.
"$VENV/bin/pip" install --no-input --quiet --no-deps \
    maraboupy==2.0.0 \
    numpy==1.26.4 \
    onnx==1.23.2 \
    onnxruntime==1.32.0 \
    protobuf==7.36.2 \
    ml_dtypes==0.5.4 \
    typing_extensions==4.16.0 \
    flatbuffers==25.12.19 \
    packaging==26.3
"$VENV/bin/python" -W ignore -c "import maraboupy.Marabou, onnxruntime; print('reference venv ready:', '$VENV')"
