"""A PNG of a characterization projected onto two input dimensions.

Boxes are painted safe (green), then undecided (grey), then unsafe (red), so a
point of the plane is green only when every box above it is proved safe: the
picture never shows more safety than was proved.  Needs matplotlib (the
``report`` extra).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from relugate.compiler.errors import BadSpec, BundleError, RelugateError

COLOURS = {"safe": "#2e9e44", "undecided": "#b5b5b5", "unsafe": "#d62728"}


def parse_dims(text: str, n_inputs: int) -> tuple[int, int]:
    """``"0,1"`` -> (0, 1): two different input indices below ``n_inputs``."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not all(p.lstrip("-").isdigit() for p in parts):
        raise BadSpec(f"--dims takes two input indices such as 0,1, not {text!r}")
    a, b = int(parts[0]), int(parts[1])
    if a == b:
        raise BadSpec(f"--dims needs two different inputs, not {a} twice")
    for d in (a, b):
        if not 0 <= d < n_inputs:
            raise BadSpec(f"--dims {text}: input {d} does not exist (the model has {n_inputs})")
    return a, b


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise RelugateError('the plot needs matplotlib: pip install "relugate[report]"') from exc


def plot_regions(data: dict[str, Any], path: Path, dims: Sequence[int], case: int = 0) -> None:
    """Write the boxes of ``case`` projected onto ``dims`` as a PNG at ``path``."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Patch, Rectangle

    a, b = dims
    box = data["cases"][case]["box"]
    fig, ax = plt.subplots(figsize=(6, 5), dpi=120)
    boxes = [x for x in data["boxes"] if x["case"] == case]
    for status in ("safe", "undecided", "unsafe"):
        rects = [
            Rectangle((x["lo"][a], x["lo"][b]), x["hi"][a] - x["lo"][a], x["hi"][b] - x["lo"][b])
            for x in boxes
            if x["status"] == status
        ]
        if rects:
            ax.add_collection(
                PatchCollection(rects, facecolor=COLOURS[status], edgecolor="none", alpha=1.0)
            )
    cex = np.array([x["counterexample"]["input"] for x in boxes if x["status"] == "unsafe"])
    if cex.size:
        ax.plot(cex[:, a], cex[:, b], "k.", markersize=2, label="counterexample")
    ax.set_xlim(box["lo"][a], box["hi"][a] if box["hi"][a] > box["lo"][a] else box["lo"][a] + 1)
    ax.set_ylim(box["lo"][b], box["hi"][b] if box["hi"][b] > box["lo"][b] else box["lo"][b] + 1)
    ax.set_xlabel(f"X_{a}")
    ax.set_ylabel(f"X_{b}")
    vol = data["cases"][case]["volume"]
    ax.set_title(
        f"safe {100 * vol['safe']:.2f}%  unsafe {100 * vol['unsafe']:.2f}%  "
        f"undecided {100 * vol['undecided']:.2f}% of the box",
        fontsize=9,
    )
    handles = [Patch(color=c, label=s) for s, c in COLOURS.items()]
    ax.legend(handles=handles, loc="upper right", fontsize=8, framealpha=0.8)
    fig.tight_layout()
    tmp = path.absolute().parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}.png"
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise BundleError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        plt.close(fig)
