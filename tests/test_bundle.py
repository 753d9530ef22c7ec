"""The bundle on disk: layout, manifest, and the checks before anything is loaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tvm_helpers import COLLISION_BOX, collision, make_bundle

import relugate.runtime as rt
from relugate.compiler.backends.tvm import lower
from relugate.compiler.bundle import canonical_hash
from relugate.compiler.errors import BundleError


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("b") / "bundle", certificate={"proved": []})


def test_bundle_layout_and_manifest(bundle: Path) -> None:
    names = {p.name for p in bundle.iterdir()}
    assert names == {"model.so", "model.onnx", "certificate.json", "manifest.json"}
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["target"]["name"] == "llvm" and manifest["runnable"]
    assert manifest["input"] == {
        "name": "obs", "shape": ["batch", 3], "sample_shape": [3], "has_batch": True,
        "dtype": "float32",
    }  # fmt: skip
    assert manifest["outputs"][0]["name"] == "advisory"
    assert manifest["domain"] == COLLISION_BOX and manifest["policy"] == "reject"
    assert set(manifest["files"]) == names - {"manifest.json"}
    assert manifest["tvm_version"] and manifest["relugate_version"]
    assert manifest["manifest_sha256"] == canonical_hash(manifest)


@pytest.mark.parametrize("name", ["model.so", "model.onnx", "certificate.json", "manifest.json"])
def test_modified_file_is_refused(bundle: Path, tmp_path: Path, name: str) -> None:
    copy = tmp_path / "copy"
    make_copy(bundle, copy)
    data = bytearray((copy / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / name).write_bytes(bytes(data))
    with pytest.raises(BundleError, match="modified"):
        rt.load(copy)


def test_missing_file_and_not_a_bundle(bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    make_copy(bundle, copy)
    (copy / "model.so").unlink()
    with pytest.raises(BundleError, match="missing"):
        rt.load(copy)
    with pytest.raises(BundleError, match=r"no manifest\.json"):
        rt.load(tmp_path)


def make_copy(bundle: Path, copy: Path) -> None:
    copy.mkdir()
    for p in bundle.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())


def rewrite_manifest(path: Path, **target: object) -> None:
    """Change the target as a bundle built elsewhere would have it (hash kept valid)."""
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["target"].update(target)
    manifest["manifest_sha256"] = canonical_hash(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ({"machine": "riscv64"}, "compiled for riscv64"),
        ({"cpu_flags": ["avx2", "no_such_flag"]}, "lacks no_such_flag"),
        ({"device": "cuda", "cuda_arch": "sm_80"}, "no CUDA device"),
    ],
)
def test_wrong_target_is_refused(
    bundle: Path, tmp_path: Path, target: dict[str, object], message: str
) -> None:
    import tvm

    if target.get("device") == "cuda" and tvm.cuda(0).exist:
        pytest.skip("this host has a CUDA device")
    copy = tmp_path / "copy"
    make_copy(bundle, copy)
    rewrite_manifest(copy, **target)
    with pytest.raises(BundleError, match=message):
        rt.load(copy)


def test_cross_compiled_bundle_is_refused_here(tmp_path: Path) -> None:
    path = make_bundle(tmp_path / "arm", lowered=lower(collision(), "aarch64"))
    with pytest.raises(BundleError, match="aarch64"):
        rt.load(path)


def test_policy_needs_a_domain(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="needs an input domain"):
        make_bundle(tmp_path / "b", domain=None, policy="clamp")
    with pytest.raises(BundleError, match="policy must be one of"):
        make_bundle(tmp_path / "c", policy="ignore")
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
