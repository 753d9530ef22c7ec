"""The relugate runtime: load a compiled bundle and run it.

    m = relugate.runtime.load("bundle/")   # checks hashes and target first
    y = m.run(x)                           # one input or a batch (n, ...)
    m.stats()                              # inputs, out-of-domain, gate firings, ...

Needs only numpy and the TVM runtime: no onnx, z3, scipy or onnxruntime
(``tests/test_runtime.py`` checks this in a subprocess).
"""

from __future__ import annotations

from pathlib import Path

from relugate.runtime.errors import BadInput, BundleError, OutOfDomain
from relugate.runtime.model import Model, RunResult


def load(path: str | Path) -> Model:
    """Open the bundle at ``path``; a modified, foreign or mismatched bundle raises
    ``BundleError`` before any of its code is loaded."""
    from relugate.runtime.bundle import (
        check_target,
        device_for,
        load_library,
        read_manifest,
        verify_files,
    )
    from relugate.runtime.executor import Executor

    bundle = Path(path)
    manifest = read_manifest(bundle)
    verify_files(bundle, manifest)
    check_target(manifest)
    module = load_library(bundle, manifest)
    spec = manifest["input"]
    sample, batch = tuple(spec["sample_shape"]), manifest["batch"]
    packed = bool(manifest["gates"].get("packed", False))  # older bundles: two outputs
    counts = bool(manifest["gates"].get("counts", False))  # older bundles: counted here
    executor = Executor(
        module, device_for(manifest), sample, batch, spec["has_batch"], packed, counts
    )
    regions = None
    if "regions.json" in manifest.get("files", {}):  # hashed above like every file
        from relugate.runtime.regions import load_regions

        regions = load_regions(bundle / "regions.json")
    return Model(manifest, executor, str(bundle), regions)


__all__ = ["BadInput", "BundleError", "Model", "OutOfDomain", "RunResult", "load"]
