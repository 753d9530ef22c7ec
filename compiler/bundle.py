"""The deployable bundle: compiled library, final ONNX, certificate, manifest.

``write_bundle`` fills a folder the caller got from ``atomic.atomic_directory``
(so a failed write leaves nothing behind):

    model.so | model.tar    the library (``backends.tvm.Lowered.export``)
    model.cu, model.fatbin  cuda only: the device source, and nvcc's build of it
    model.onnx              the final (reduced, gated) model the library was built from
    certificate.json        what was proved, when given
    manifest.json           what the runtime checks before it loads anything

The manifest holds the target, input/output names, shapes and dtypes, the
input domain and the out-of-domain policy, the sha256 of every other file,
the relugate and TVM versions, and ``manifest_sha256``: the sha256 of the
manifest's own canonical JSON without that field.  The hashes detect
corruption and edits; they are not a signature (whoever can edit the
bundle can recompute them).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import onnx

from relugate import __version__
from relugate.compiler.backends.tvm import Lowered
from relugate.compiler.errors import BundleError

FORMAT = "relugate-bundle"
FORMAT_VERSION = 1
POLICIES = ("reject", "clamp", "flag")
MANIFEST = "manifest.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def canonical_hash(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON, without ``manifest_sha256`` itself."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _domain_json(domain: Any, size: int) -> dict[str, list[float]] | None:
    """``domain`` (a ``Box``, a ``{"lo", "hi"}`` dict, or None) as JSON lists."""
    if domain is None:
        return None
    lo = domain["lo"] if isinstance(domain, dict) else domain.lo
    hi = domain["hi"] if isinstance(domain, dict) else domain.hi
    lo = [float(v) for v in getattr(lo, "tolist", lambda: lo)()]
    hi = [float(v) for v in getattr(hi, "tolist", lambda: hi)()]
    if len(lo) != size or len(hi) != size:
        raise BundleError(f"domain has {len(lo)}/{len(hi)} bounds; the input has {size} values")
    if any(a > b for a, b in zip(lo, hi, strict=True)):
        raise BundleError("domain is empty: a lower bound exceeds its upper bound")
    return {"lo": lo, "hi": hi}


def _tvm_version() -> str:
    import tvm

    return str(tvm.__version__)


def build_manifest(
    lowered: Lowered, files: dict[str, str], domain: Any, policy: str, extra: dict[str, Any]
) -> dict[str, Any]:
    size = 1
    for d in lowered.input.sample_shape:
        size *= d
    library = next(n for n in files if n.startswith("model.") and n.endswith((".so", ".tar")))
    gated = lowered.gated
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "relugate_version": __version__,
        "tvm_version": _tvm_version(),
        "target": lowered.target.to_json(),
        "library": library,
        "runnable": library.endswith(".so"),
        "link_error": lowered.link_error,
        "batch": lowered.batch,
        "input": lowered.input.to_json(lowered.batch),
        "outputs": [o.to_json(lowered.batch) for o in lowered.outputs[:1]],
        "library_outputs": [o.name for o in lowered.outputs],
        "gates": {
            "nodes": lowered.gate_nodes,
            "ungated_output": 1 if gated else None,
            "packed": gated,  # one library output: concat([output, ungated], axis=0)
            "counts": lowered.counted,  # ...then 2 rows: firings per element, and in all
            "firing": "an input fires a gate when the gated and ungated outputs differ"
            if gated
            else None,
        },
        "domain": _domain_json(domain, size),
        "policy": policy,
        "tuning": lowered.tuning.to_json() if lowered.tuning else None,
        "cuda": lowered.nvcc,
        "extra": extra,
        "files": files,
    }
    manifest["manifest_sha256"] = canonical_hash(manifest)
    return manifest


def write_bundle(
    directory: Path,
    lowered: Lowered,
    final_onnx: onnx.ModelProto,
    certificate: dict[str, Any] | None = None,
    domain: Any = None,
    policy: str = "reject",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the bundle into ``directory`` (an ``atomic_directory``); return the manifest.

    The manifest lists the sha256 of every file then in ``directory``, so write
    anything else the bundle should carry (``report.json``) before calling this.
    """
    if policy not in POLICIES:
        raise BundleError(f"out-of-domain policy must be one of {', '.join(POLICIES)}: {policy!r}")
    if policy != "reject" and domain is None:
        raise BundleError(f"policy {policy!r} needs an input domain")
    directory.mkdir(parents=True, exist_ok=True)
    lowered.export(directory)
    (directory / "model.onnx").write_bytes(final_onnx.SerializeToString())
    if certificate is not None:
        (directory / "certificate.json").write_text(json.dumps(certificate, indent=2) + "\n")
    # every file in the folder, the caller's own (report.json, ...) too: so call this last
    present = sorted(p.name for p in directory.iterdir() if p.is_file() and p.name != MANIFEST)
    files = {name: sha256_file(directory / name) for name in present}
    manifest = build_manifest(lowered, files, domain, policy, dict(extra or {}))
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
