"""The Docker edge image (docker/): the runtime tree loads a bundle with the compiler's
packages unimportable; the Dockerfile's runtime stage runs nothing (an arm64 image needs
no emulation); and (slow, needs buildah and root) docker/build.sh builds the image from a
debootstrap base, runs it and gets correct answers from its endpoint."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tvm_helpers import assert_close, make_bundle

import relugate.runtime as rt

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"


def stages(dockerfile: str) -> dict[str, list[str]]:
    """Instruction keywords per stage name (``FROM ... AS name``)."""
    lines = re.sub(r"\\\n", " ", dockerfile).splitlines()
    out: dict[str, list[str]] = {}
    name = ""
    for line in (raw.strip() for raw in lines):
        if not line or line.startswith("#"):
            continue
        word = line.split()[0].upper()
        if word == "FROM":
            name = line.split()[-1] if " AS " in line.upper() else f"stage{len(out)}"
            out[name] = []
        elif name:
            out[name].append(word)
    return out


def test_dockerfile_runtime_stage_only_copies() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE=python:3\.11-slim$", text, re.M)
    found = stages(text)
    assert list(found) == ["build", "runtime"]
    assert "RUN" not in found["runtime"], found["runtime"]
    assert {"COPY", "ENTRYPOINT", "HEALTHCHECK", "USER"} <= set(found["runtime"])
    assert "--platform=$BUILDPLATFORM" in text  # the build stage runs on the build machine


BLOCKER = """
import sys
BLOCKED = ("onnx", "onnxruntime", "z3", "scipy", "onnx_graphsurgeon", "typer", "rich")
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("the runtime image has no " + name)
sys.meta_path.insert(0, Block())
import numpy as np
import relugate, relugate.runtime as rt
assert relugate.__file__.startswith(sys.argv[2]), relugate.__file__
m = rt.load(sys.argv[1])
print(m.run(np.array([[6.0, 11.0, 12.0]], np.float32)).tolist())
"""


def test_runtime_tree_runs_a_bundle_alone(tmp_path: Path) -> None:
    """docker/runtime_tree.sh copies everything the runtime imports from relugate (the
    image has nothing else of it): a bundle loads and runs from that tree alone."""
    tree = tmp_path / "app"
    subprocess.run(["sh", str(DOCKER / "runtime_tree.sh"), str(ROOT), str(tree)], check=True)
    assert not (tree / "relugate" / "passes").exists()
    assert sorted(p.name for p in (tree / "relugate" / "compiler").iterdir()) == [
        "__init__.py",
        "errors.py",
    ]
    bundle = make_bundle(tmp_path / "bundle")
    env = {**os.environ, "PYTHONPATH": str(tree), "TVM_USE_RUNTIME_LIB": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKER, str(bundle), str(tree)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    want = rt.load(bundle).run(np.array([[6.0, 11.0, 12.0]], np.float32))
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == want.tolist()


def buildah_ready() -> str | None:
    if shutil.which("buildah") is None:
        return "buildah not installed (apt-get install buildah debootstrap)"
    if os.geteuid() != 0:
        return "needs root (debootstrap, chroot isolation)"
    return None


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_image_builds_and_serves(arch: str, tmp_path: Path) -> None:
    """docker/build.sh end to end: debootstrap base(s), buildah bud, run the entrypoint
    (arm64: under qemu-user), /health, /predict, /stats and the HEALTHCHECK command.  The
    answers equal the runtime's on the bundle the image holds (arm64: the host build of
    the same model within 1e-5); the image holds no compiler packages."""
    reason = buildah_ready()
    if reason:
        pytest.skip(reason)
    if arch == "arm64" and not (shutil.which("qemu-aarch64-static") or shutil.which("apt-get")):
        pytest.skip("qemu-aarch64-static not installed (Debian: qemu-user-static)")
    work = Path(os.environ.get("RELUGATE_DOCKER_WORK", "/var/tmp/relugate-docker"))
    proc = subprocess.run(
        ["sh", str(DOCKER / "build.sh"), str(work)],
        capture_output=True, text=True, timeout=3600, check=False,
        env={**os.environ, "TARGETARCH": arch},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-5000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\nimage {summary['image']}: {summary['size']} (base {summary['base_size']})")
    health = summary["health"]
    assert health["policy"] == "reject" and summary["image_arch"] == arch
    assert health["target"] == {"amd64": "llvm", "arm64": "aarch64"}[arch]
    x = np.asarray(summary["inputs"], np.float32)
    got = np.asarray(summary["outputs"], np.float32)
    if arch == "amd64":  # the bundle as built inside the image, run here
        np.testing.assert_array_equal(got, rt.load(summary["bundle"]).run(x))
    else:  # the same model built for this host
        assert_close(rt.load(make_bundle(tmp_path / "host")).run(x), got)
    assert summary["stats"]["model"]["rejected"] == 1
    storage = ["--root", str(work / "storage"), "--runroot", str(work / "run")]
    storage += ["--storage-driver", "vfs"]

    def bah(*args: str) -> str:
        done = subprocess.run(["buildah", *storage, *args], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    ctr = bah("from", "--pull=never", summary["image"])
    try:
        mnt = Path(bah("mount", ctr))
        site = mnt / "opt" / "relugate" / "site"
        present = {p.name for p in site.iterdir()}
        assert {"numpy", "tvm", "tvm_ffi"} <= present
        assert not present & {"onnx", "onnxruntime", "scipy", "z3", "typer", "rich"}, present
        assert not (site / "tvm" / "lib" / "libtvm_compiler.so").exists()
        from elftools.elf.elffile import ELFFile

        with (site / "tvm" / "lib" / "libtvm_runtime.so").open("rb") as f:
            machine = ELFFile(f)["e_machine"]
        assert machine == {"amd64": "EM_X86_64", "arm64": "EM_AARCH64"}[arch]
        assert not (mnt / "opt" / "build").exists() and not (mnt / "usr" / "bin" / "gcc").exists()
    finally:
        bah("rm", ctr)
