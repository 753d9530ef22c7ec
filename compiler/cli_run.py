"""``relugate run``: run a bundle or an ONNX model on inputs from a .npy file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.markup import escape

from relugate.compiler.cli_app import app, err, guard, out


@app.command()
def run(
    model: Annotated[Path, typer.Argument(help="Bundle folder, or an ONNX model file.")],
    inputs: Annotated[Path, typer.Argument(help=".npy file: one input, or a batch (N, ...).")],
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Save outputs as .npy.")
    ] = None,
) -> None:
    """Run a compiled bundle (its TVM library, through relugate.runtime) or an ONNX model
    (relugate's float32 reference evaluator) on the inputs in a .npy file."""
    from relugate.compiler.errors import BadInput, BundleError

    with guard():
        try:
            array = np.load(inputs, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise BadInput(f"{inputs}: not a readable .npy file ({exc})") from exc
        result = _run_bundle(model, array) if model.is_dir() else _run_onnx(model, array)
        if output is not None:
            try:
                with open(output, "wb") as f:  # np.save(path) would append .npy to other names
                    np.save(f, result)
            except OSError as exc:
                raise BundleError(f"{output}: cannot write ({exc.strerror})") from exc
            out.print(f"wrote {escape(str(output))} {result.shape}", highlight=False)
        else:
            np.set_printoptions(precision=6, suppress=True)
            out.print(result, highlight=False)


def _run_onnx(model: Path, array: np.ndarray) -> np.ndarray:
    from relugate.compiler.frontend import load_model
    from relugate.compiler.importer import import_network
    from relugate.runtime.checks import check_batch

    net = import_network(load_model(model))
    batch, single = check_batch(array, net.input.shape, net.input.has_batch, net.input.name)
    result = net.forward(batch, np.float32)
    return result.reshape(net.output.shape) if single else result


def _run_bundle(bundle: Path, array: np.ndarray) -> np.ndarray:
    from relugate import runtime

    model = runtime.load(bundle)
    result = model.run(array)
    stats = model.stats()
    err.print(f"runtime: {json.dumps(stats)}", highlight=False)
    return np.asarray(result)
