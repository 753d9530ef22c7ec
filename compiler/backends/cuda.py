"""CUDA output without a GPU: the generated source, and nvcc's check that it builds.

TVM 0.27 built for ``Target({"kind": "cuda", "arch": "sm_XX"}, host="llvm")``
keeps the device code as CUDA source inside the library (format "cuda"):
the runtime JIT-compiles it on load through ``tvm_callback_cuda_compile``
(NVRTC from cuda-python, or nvcc with ``TVM_CUDA_COMPILE_MODE=nvcc``), so
compiling needs no driver but running needs a GPU.  ``inspect_source("")``
returns the source; ``inspect_source("cu")`` returns an empty string.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any


def compile_cuda_source(source: Path, arch: str) -> dict[str, Any]:
    """Compile ``source`` to a fatbin with nvcc when present (a check that it builds)."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return {"ok": False, "message": "nvcc not found; CUDA source exported only"}
    out = source.with_suffix(".fatbin")
    cmd = [nvcc, "--fatbin", f"-arch={arch}", "-O3", "-o", str(out), str(source)]
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    result: dict[str, Any] = {"ok": proc.returncode == 0}
    result["seconds"] = round(time.monotonic() - start, 2)
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=False)
    result["nvcc"] = version.stdout.strip().splitlines()[-1] if version.stdout else "?"
    if proc.returncode != 0:
        result["message"] = proc.stderr[-2000:]
        out.unlink(missing_ok=True)
    return result


def cuda_source(executable: Any) -> str | None:
    """The CUDA C of the device module (``inspect_source("")``; "cu" returns nothing)."""
    stack = [executable.mod]
    while stack:
        module = stack.pop()
        if module.kind == "cuda":
            return str(module.inspect_source(""))
        stack.extend(module.imports)
    return None
