"""``python -m benchmarks [NAME ...]``: run the benchmarks, one after another.

Each benchmark is a module of this package with its own options (run
``python -m benchmarks.NAME --help``); here each runs with its defaults, in
its own process, and writes its JSON and Markdown to ``benchmarks/results/``.
Without names, all of them run (the verification benchmark alone takes about
two hours on two cores: it gives every public instance its full timeout).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time

ORDER = [
    "frontend",
    "verify",
    "stability",
    "compression",
    "gates",
    "gate_latency",
    "characterize",
    "tvm_latency",
    "pipeline_latency",
    "serve",
]


def main(argv: list[str]) -> int:
    names = argv or ORDER
    unknown = [n for n in names if n not in ORDER]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(ORDER)}")
        return 2
    failed = []
    for name in names:
        module = f"benchmarks.{name}"
        if importlib.util.find_spec(module) is None:
            print(f"== {name}: not present, skipped")
            continue
        print(f"== {name}", flush=True)
        start = time.monotonic()
        code = subprocess.call([sys.executable, "-m", module])
        print(f"== {name}: exit {code}, {time.monotonic() - start:.0f} s", flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
