"""The aarch64 edge target: ``lower(..., "aarch64")`` cross-compiles a valid AArch64 shared
object with the same TVM entry points as the host build, and (slow) the bundle runs under
qemu-user in an arm64 Debian root file system with the runtime-only TVM install, serving
HTTP answers that match the host build."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tvm_helpers import COLLISION_BOX, assert_close, collision, make_bundle

import relugate.runtime as rt
from relugate.compiler.backends.targets import CROSS_GCC
from relugate.compiler.backends.tvm import lower

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(
    shutil.which(CROSS_GCC["aarch64"]) is None,
    reason=f"{CROSS_GCC['aarch64']} not installed (Debian: gcc-aarch64-linux-gnu)",
)
LO, HI = np.array(COLLISION_BOX["lo"]), np.array(COLLISION_BOX["hi"])


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The collision net as an aarch64 bundle and as a host (llvm) bundle."""
    out = tmp_path_factory.mktemp("aarch64")
    arm = make_bundle(out / "arm", lowered=lower(collision(), "aarch64"))
    host = make_bundle(out / "host", lowered=lower(collision(), "llvm"))
    return arm, host


def symbols(library: Path) -> tuple[dict[str, str], set[str], set[str], list[str]]:
    """ELF facts of ``library``: header fields, defined and undefined dynamic symbols,
    needed libraries (pyelftools)."""
    from elftools.elf.dynamic import DynamicSection
    from elftools.elf.elffile import ELFFile

    with library.open("rb") as f:
        elf = ELFFile(f)
        header = {
            "machine": elf["e_machine"],
            "type": elf["e_type"],
            "class": str(elf.elfclass),
            "endian": "little" if elf.little_endian else "big",
        }
        dynsym = elf.get_section_by_name(".dynsym")
        defined, undefined = set(), set()
        for sym in dynsym.iter_symbols():
            if not sym.name:
                continue
            (undefined if sym["st_shndx"] == "SHN_UNDEF" else defined).add(sym.name)
        needed = [
            tag.needed
            for section in elf.iter_sections()
            if isinstance(section, DynamicSection)
            for tag in section.iter_tags()
            if tag.entry.d_tag == "DT_NEEDED"
        ]
    return header, defined, undefined, needed


def test_library_is_an_aarch64_shared_object(bundles: tuple[Path, Path]) -> None:
    arm, host = bundles
    manifest = json.loads((arm / "manifest.json").read_text())
    assert manifest["target"]["machine"] == "aarch64" and manifest["runnable"] is True
    header, defined, undefined, needed = symbols(arm / manifest["library"])
    assert header == {"machine": "EM_AARCH64", "type": "ET_DYN", "class": "64", "endian": "little"}
    host_header, host_defined, _, _ = symbols(host / "model.so")
    assert host_header["machine"] == "EM_X86_64"
    # the same TVM entry points as the host build: the embedded module blob and every kernel
    entry = {s for s in host_defined if s.startswith("__tvm_ffi_")}
    assert "__tvm_ffi__library_bin" in entry and len(entry) > 3
    assert entry <= defined, sorted(entry - defined)
    # what it needs from outside is the TVM FFI (resolved by libtvm_ffi at load) and libc
    ffi = {s for s in undefined if s.startswith("TVMFFI")}
    assert ffi, sorted(undefined)
    assert all(n.startswith(("libc.so", "libm.so", "ld-linux-aarch64")) for n in needed), needed


def test_host_refuses_the_aarch64_bundle(bundles: tuple[Path, Path]) -> None:
    from relugate.runtime.bundle import host_machine

    if host_machine() == "aarch64":
        pytest.skip("this host is aarch64")
    with pytest.raises(rt.BundleError, match="compiled for aarch64"):
        rt.load(bundles[0])


def qemu_ready() -> str | None:
    """Why the qemu test cannot run here, or None."""
    if os.geteuid() != 0 or shutil.which("chroot") is None:
        return "needs root and chroot (to enter the arm64 root file system)"
    if shutil.which("qemu-aarch64-static") is None and shutil.which("apt-get") is None:
        return "qemu-aarch64-static not installed (Debian: qemu-user-static)"
    return None


@pytest.mark.slow
def test_bundle_serves_under_qemu(bundles: tuple[Path, Path]) -> None:
    """arm64 Debian + the aarch64 wheels of numpy and TVM (libtvm_compiler.so deleted) under
    qemu-user: the aarch64 bundle loads, serves over HTTP, and its outputs equal the host
    build's within 1e-5; out-of-domain rows are refused by its policy."""
    reason = qemu_ready()
    if reason:
        pytest.skip(reason)
    sysroot = ROOT / "build" / "aarch64-sysroot"  # cached: debootstrap and wheels once
    script = ROOT / "docker" / "aarch64_sysroot.sh"
    env = {**os.environ, "PYTHON": os.environ.get("PYTHON", sys.executable)}
    made = subprocess.run(
        ["sh", str(script), str(sysroot)], capture_output=True, text=True, env=env, check=False
    )
    if made.returncode != 0:
        pytest.skip(f"no arm64 root file system (offline?): {made.stderr[-500:]}")
    arm, host = bundles
    inside = sysroot / "tmp" / "relugate-bundle"
    shutil.rmtree(inside, ignore_errors=True)
    shutil.copytree(arm, inside)
    run_env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": "/opt/relugate/app:/opt/relugate/site",
        "PYTHONUNBUFFERED": "1",
    }
    chroot = shutil.which("chroot") or "chroot"
    args = [chroot, str(sysroot), "/usr/bin/qemu-aarch64-static", "/usr/bin/python3"]
    args += ["-m", "relugate.runtime.serve", "/tmp/relugate-bundle", "--port", "0"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=run_env)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline().decode()
        assert line.startswith("serving "), (line, proc.stderr.read().decode()[-3000:])
        host_name, port = line.rsplit("http://", 1)[1].strip().rsplit(":", 1)
        conn = http.client.HTTPConnection(host_name, int(port), timeout=120)
        conn.request("GET", "/health")
        health = json.loads(conn.getresponse().read())
        assert health["model"]["machine"] == "aarch64" and health["model"]["target"] == "aarch64"
        x = (LO + np.random.default_rng(0).random((200, 3)) * (HI - LO)).astype(np.float32)
        headers = {"Content-Type": "application/json"}
        conn.request("POST", "/predict", json.dumps({"inputs": x.tolist()}), headers)
        response = conn.getresponse()
        body = json.loads(response.read())
        assert response.status == 200, body
        assert_close(rt.load(host).run(x), np.asarray(body["outputs"], dtype=np.float32))
        bad = x[:2].copy()
        bad[1, 2] = HI[2] + 1
        conn.request("POST", "/predict", json.dumps({"inputs": bad.tolist()}), headers)
        response = conn.getresponse()
        assert response.status == 422, response.read()
        response.read()
        conn.request("GET", "/stats")
        stats = json.loads(conn.getresponse().read())["model"]
        assert stats["inputs"] == 200 and stats["rejected"] == 1
        proc.terminate()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
