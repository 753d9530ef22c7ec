"""TVM targets by name, and what a host must offer to run code built for them.

``llvm``     the host CPU (``mcpu`` of this machine, or ``generic`` / a named CPU)
``aarch64``  64-bit Arm Linux, cross-compiled (``mtriple=aarch64-linux-gnu``)
``cuda``     NVIDIA GPU (``arch`` sm_XX) with host code for this machine

TVM 0.27 no longer parses CLI-style target strings (``"llvm -mcpu=x"`` raises);
targets are JSON-like dicts, and ``str(target)`` is their JSON.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from typing import Any

from relugate.compiler.errors import BadSpec, RelugateError

TARGET_NAMES = ("llvm", "aarch64", "cuda")
AARCH64_TRIPLE = "aarch64-linux-gnu"
CROSS_GCC = {"aarch64": "aarch64-linux-gnu-gcc"}

# LLVM feature name -> /proc/cpuinfo flag: the instruction sets generated code may use.
X86_FLAGS = {
    "sse4.1": "sse4_1", "sse4.2": "sse4_2", "ssse3": "ssse3", "popcnt": "popcnt",
    "avx": "avx", "avx2": "avx2", "fma": "fma", "f16c": "f16c", "bmi": "bmi1",
    "bmi2": "bmi2", "movbe": "movbe", "avx512f": "avx512f", "avx512bw": "avx512bw",
    "avx512dq": "avx512dq", "avx512vl": "avx512vl", "avx512cd": "avx512cd",
    "avx512vnni": "avx512_vnni", "avx512bf16": "avx512_bf16", "avx512fp16": "avx512_fp16",
}  # fmt: skip
ARM_FLAGS = {"neon": "asimd", "sve": "sve", "sve2": "sve2", "dotprod": "asimddp",
             "fullfp16": "fphp", "i8mm": "i8mm", "bf16": "bf16"}  # fmt: skip


@dataclass(frozen=True)
class TargetInfo:
    name: str  # llvm | aarch64 | cuda
    target: Any = field(repr=False)  # tvm.target.Target
    machine: str  # the CPU architecture the host code runs on: x86_64, aarch64
    mcpu: str
    cpu_flags: tuple[str, ...]  # /proc/cpuinfo flags the host code needs
    cuda_arch: str | None = None

    @property
    def device(self) -> str:
        return "cuda" if self.name == "cuda" else "cpu"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "device": self.device,
            "machine": self.machine,
            "mcpu": self.mcpu,
            "cpu_flags": list(self.cpu_flags),
            "cuda_arch": self.cuda_arch,
            "tvm_target": str(self.target),
        }


def host_machine() -> str:
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def resolve_target(
    name: str, mcpu: str | None = None, cuda_arch: str = "sm_80", num_cores: int | None = None
) -> TargetInfo:
    """The TVM target for ``name``; ``mcpu=None`` means this host's CPU (or generic)."""
    from tvm.target import Target, codegen

    if name not in TARGET_NAMES:
        raise RelugateError(f"unknown target {name!r}; choose one of {', '.join(TARGET_NAMES)}")
    if name == "aarch64":
        cpu = mcpu or "generic"
        host: dict[str, Any] = {"kind": "llvm", "mtriple": AARCH64_TRIPLE, "mcpu": cpu}
        machine = "aarch64"
    else:
        cpu = mcpu or codegen.llvm_get_system_cpu() or "generic"
        host = {"kind": "llvm", "mcpu": cpu}
        machine = host_machine()
    if num_cores:
        host["num-cores"] = int(num_cores)
    triple = host.get("mtriple") or codegen.llvm_get_system_triple()
    if mcpu is not None and mcpu != "generic" and not codegen.llvm_is_valid_cpu(mcpu, triple):
        # TVM would only log an error and build for "generic" under the name given
        raise BadSpec(f"--mcpu {mcpu!r} is not a CPU LLVM knows for {triple}")
    try:
        host_target = Target(host)
        features = set(codegen.llvm_get_cpu_features(host_target))
        if name == "cuda":
            target = Target({"kind": "cuda", "arch": cuda_arch}, host=host)
        else:
            target = host_target
    except Exception as exc:  # TVM raises ValueError/RuntimeError for unknown CPUs and arches
        raise RelugateError(f"TVM rejects target {name!r} (mcpu={cpu!r}): {exc}") from exc
    flags = ARM_FLAGS if machine == "aarch64" else X86_FLAGS
    needed = tuple(sorted(flags[f] for f in features if f in flags))
    return TargetInfo(name, target, machine, cpu, needed, cuda_arch if name == "cuda" else None)
