"""Run a bundle on the inputs of a .npy file, from the runtime alone (no typer, onnx, z3):

    python -m relugate.runtime.predict BUNDLE INPUTS.npy [-o OUTPUTS.npy]

The command-line twin of ``POST /predict`` for the Docker runtime image (``relugate run``
needs the full install).  Prints the outputs (or writes them, atomically, with ``-o``),
then one JSON line on stderr: per-row out-of-domain and gate flags counted, and
``model.stats()``.  Exit codes as ``relugate``: 3 bad input, 5 bundle problem.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np


def save_atomic(path: Path, array: np.ndarray) -> None:
    """``array`` as .npy at ``path``: a temporary file beside it, then one rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.absolute().parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m relugate.runtime.predict", description="Run a relugate bundle."
    )
    parser.add_argument("bundle", help="bundle folder")
    parser.add_argument("inputs", type=Path, help=".npy file: one input or a batch (N, ...)")
    parser.add_argument("-o", "--output", type=Path, help="write the outputs here (.npy)")
    args = parser.parse_args(argv)
    from relugate.runtime import load
    from relugate.runtime.errors import BadInput, BundleError, RelugateError

    try:
        model = load(args.bundle)
        try:
            x = np.load(args.inputs, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise BadInput(f"{args.inputs}: not a readable .npy file ({exc})") from exc
        result = model.run_detailed(x)
        if args.output is not None:
            try:
                save_atomic(args.output, result.output)
            except OSError as exc:
                raise BundleError(f"{args.output}: cannot write ({exc.strerror})") from exc
        else:
            np.set_printoptions(precision=6, suppress=True)
            print(result.output)
    except RelugateError as exc:
        print(f"error ({exc.kind}): {exc}", file=sys.stderr)
        return exc.exit_code
    summary = {
        "rows": len(result.gate_fired),
        "out_of_domain": int(result.out_of_domain.sum()),
        "gate_fired": int(result.gate_fired.sum()),
        "stats": model.stats(),
    }
    print(json.dumps(summary), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
