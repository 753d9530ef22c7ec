"""Open a bundle safely: manifest, hashes, target, then the library.

Nothing from the bundle is loaded before it passes its checks, and the
library that is loaded is the bytes that were hashed (copied to a private
file first), not whatever the path holds a moment later.  Needs only numpy
and the TVM runtime (``tvm.runtime``; the ``libtvm_compiler`` part of the
wheel is not needed: run with ``TVM_USE_RUNTIME_LIB=1`` or delete it).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any

from relugate.runtime.errors import BundleError

FORMAT = "relugate-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def canonical_hash(manifest: dict[str, Any]) -> str:
    """Must match ``compiler/bundle.canonical_hash`` (kept here: no compiler import)."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def read_manifest(bundle: Path) -> dict[str, Any]:
    path = bundle / MANIFEST
    if not bundle.is_dir():
        raise BundleError(f"{bundle} is not a folder (a bundle is a folder with {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise BundleError(f"{bundle} has no {MANIFEST}: not a relugate bundle") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path} is unreadable or was modified: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path} is not a relugate bundle manifest")
    if manifest.get("manifest_sha256") != canonical_hash(manifest):
        raise BundleError(f"{path} was modified after the bundle was written (hash mismatch)")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"bundle format {manifest.get('format_version')} is not supported by this runtime "
            f"(reads version {FORMAT_VERSION})"
        )
    return manifest


def verified_bytes(bundle: Path, name: str, manifest: dict[str, Any]) -> bytes:
    """The content of ``name``, checked against the manifest's sha256."""
    expected = manifest["files"].get(name)
    if expected is None:
        raise BundleError(f"{name} is not listed in {bundle / MANIFEST}")
    try:
        data = (bundle / name).read_bytes()
    except OSError as exc:
        raise BundleError(f"{bundle / name} is missing or unreadable: {exc.strerror}") from exc
    if hashlib.sha256(data).hexdigest() != expected:
        raise BundleError(f"{bundle / name} was modified (sha256 differs from the manifest)")
    return data


def verify_files(bundle: Path, manifest: dict[str, Any]) -> None:
    for name in manifest["files"]:
        verified_bytes(bundle, name, manifest)


def host_machine() -> str:
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def cpu_flags() -> set[str] | None:
    """This CPU's flags from /proc/cpuinfo (``flags`` on x86, ``Features`` on Arm)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return set(value.split())
    return None


def check_target(manifest: dict[str, Any]) -> None:
    target = manifest["target"]
    name = target["name"]
    if not manifest.get("runnable", False):
        raise BundleError(
            f"bundle for {name} has no loadable library: {manifest.get('link_error')}"
        )
    machine = host_machine()
    if target["machine"] != machine:
        raise BundleError(
            f"bundle was compiled for {target['machine']} ({name}); this host is {machine}"
        )
    flags = cpu_flags()
    missing = sorted(set(target["cpu_flags"]) - flags) if flags is not None else []
    if missing:
        raise BundleError(
            f"bundle was compiled for CPU {target['mcpu']!r}; this CPU lacks {', '.join(missing)}"
            " (recompile with mcpu='generic' or for this host)"
        )
    import tvm

    if manifest["tvm_version"].split(".")[:2] != str(tvm.__version__).split(".")[:2]:
        raise BundleError(
            f"bundle was built with TVM {manifest['tvm_version']}; this runtime has "
            f"{tvm.__version__} (libraries are not portable across TVM releases)"
        )
    if target["device"] == "cuda" and not tvm.cuda(0).exist:
        raise BundleError(f"bundle was compiled for CUDA ({target['cuda_arch']}); no CUDA device")


def load_library(bundle: Path, manifest: dict[str, Any]) -> Any:
    """Load the checked library bytes from a private copy."""
    import tvm

    data = verified_bytes(bundle, manifest["library"], manifest)
    tmp = tempfile.mkdtemp(prefix="relugate-lib-")
    try:
        path = os.path.join(tmp, "model.so")
        with open(path, "wb") as f:
            f.write(data)
        try:
            return tvm.runtime.load_module(path)
        except Exception as exc:  # TVM raises RuntimeError/TVMError for bad libraries
            raise BundleError(f"{bundle / manifest['library']} cannot be loaded: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the mapping stays valid after unlinking


def device_for(manifest: dict[str, Any]) -> Any:
    import tvm

    return tvm.cuda(0) if manifest["target"]["device"] == "cuda" else tvm.cpu(0)
