"""The report's figures, drawn with matplotlib and returned as inline SVG text.

matplotlib is imported here only, and only when a figure is drawn: the
runtime and ``compile`` never need it (``pip install "relugate[report]"``).
Figures use matplotlib's object API (no pyplot: no global state, no GUI
backend); text stays text (``svg.fonttype: none``), and each figure gets its
own hash salt so the ids of two inline SVGs never collide and the output is
the same from run to run.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from relugate.compiler.errors import RelugateError
from relugate.compiler.report_data import Firing, LayerWidths, ReluLayer

BEFORE, AFTER = "#9aa5b1", "#1f6feb"
INTERVAL, CROWN = "#e3a008", "#1f6feb"
FIRED = "#d1242f"
LEGEND_ABOVE: dict[str, Any] = {
    "frameon": False,
    "ncols": 3,
    "loc": "lower left",
    "bbox_to_anchor": (0.0, 1.0),
    "borderaxespad": 0.2,
}


class MissingReportExtra(RelugateError):
    """matplotlib or jinja2 is not installed."""

    kind = "missing dependency"


def _require() -> Any:
    try:
        import matplotlib
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError:
        raise MissingReportExtra(
            "relugate report --html needs matplotlib and jinja2: pip install 'relugate[report]'"
        ) from None
    return matplotlib


@contextmanager
def _figure(salt: str, width: float, height: float) -> Iterator[Any]:
    matplotlib = _require()
    from matplotlib.figure import Figure

    style = {
        "svg.fonttype": "none",
        "svg.hashsalt": f"relugate-{salt}",
        "font.size": 9,
        "axes.spines.top": False,
        "axes.spines.right": False,
    }
    with matplotlib.rc_context(style):
        yield Figure(figsize=(width, height), layout="constrained")


def _svg(fig: Any, prefix: str) -> str:
    """The figure as an ``<svg>`` element (XML declaration, doctype and comments dropped),
    its ids prefixed: matplotlib numbers them per figure (``figure_1``, ``axes_1``), so
    two figures inline in one page would share them."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    text = re.sub(r"<!--.*?-->", "", text[text.index("<svg") :], flags=re.S).strip()
    text = re.sub(r'\bid="([^"]+)"', rf'id="{prefix}-\1"', text)
    text = re.sub(r'href="#([^"]+)"', rf'href="#{prefix}-\1"', text)
    return re.sub(r"url\(#([^)]+)\)", rf"url(#{prefix}-\1)", text)


def _width_for(n: int) -> float:
    return float(min(11.0, max(5.0, 0.55 * n + 2.0)))


def relu_layers_svg(layers: Sequence[ReluLayer]) -> str:
    """Grouped bars: ReLU units per layer before and after the pipeline."""
    with _figure("relus", _width_for(len(layers)), 3.0) as fig:
        from matplotlib.ticker import MaxNLocator

        ax = fig.add_subplot()
        x = np.arange(len(layers))
        before = [lay.before for lay in layers]
        after = [lay.after for lay in layers]
        ax.bar(x - 0.2, before, 0.4, label="before", color=BEFORE)
        bars = ax.bar(x + 0.2, after, 0.4, label="after", color=AFTER)
        ax.bar_label(bars, fontsize=7, padding=1)
        ax.set_xticks(x, [lay.name for lay in layers], rotation=30 if len(layers) > 6 else 0)
        ax.set_ylabel("ReLU units")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(**LEGEND_ABOVE)
        ax.set_ylim(0, max([*before, *after, 1]) * 1.15)
        return _svg(fig, "relus")


def pass_steps_svg(passes: Sequence[dict[str, Any]]) -> str:
    """ReLUs, parameters and FLOPs after each pass, as a share of the input model's."""
    with _figure("passes", _width_for(len(passes) + 1), 2.8) as fig:
        ax = fig.add_subplot()
        labels = ["imported", *(str(p["name"]) for p in passes)]
        lines = (
            ("relus", AFTER, "o", "-"),
            ("params", INTERVAL, "s", "--"),
            ("flops", FIRED, "^", ":"),
        )
        for key, color, marker, style in lines:
            start = passes[0].get(f"{key}_before") if passes else None
            if not isinstance(start, int | float) or start <= 0:
                continue
            values = [start, *(p.get(f"{key}_after", start) for p in passes)]
            share = [100.0 * float(v) / start for v in values]
            ax.plot(labels, share, marker=marker, linestyle=style, label=key, color=color)
        ax.set_ylabel("% of input")
        ax.set_ylim(0, 110)
        ax.tick_params(axis="x", labelrotation=20)
        ax.legend(**LEGEND_ABOVE)
        return _svg(fig, "passes")


def bound_widths_svg(widths: Sequence[LayerWidths]) -> str:
    """Per ReLU layer, the distribution of pre-activation bound widths (interval, CROWN)."""
    with _figure("widths", _width_for(len(widths)), 3.2) as fig:
        ax = fig.add_subplot()
        x = np.arange(len(widths))
        has_crown = any(w.crown is not None for w in widths)
        shift = 0.2 if has_crown else 0.0
        groups = [("interval", INTERVAL, -shift, [w.interval for w in widths])]
        if has_crown:
            crown = [w.crown if w.crown is not None else np.zeros(0) for w in widths]
            groups.append(("CROWN", CROWN, shift, crown))
        positive = np.concatenate([d[d > 0] for *_, data in groups for d in data] or [np.ones(1)])
        for label, color, dx, data in groups:
            parts = ax.boxplot(
                [np.maximum(d, 1e-12) for d in data],
                positions=x + dx,
                widths=0.35,
                whis=(0, 100),  # whiskers at min and max: no flier markers, small SVG
                patch_artist=True,
                medianprops={"color": "black"},
            )
            for box in parts["boxes"]:
                box.set_facecolor(color)
                box.set_alpha(0.7)
            ax.plot([], [], "s", color=color, label=label)
        if positive.size and positive.max() / max(positive.min(), 1e-12) > 100:
            ax.set_yscale("log")
        ax.set_xticks(x, [w.name for w in widths], rotation=30 if len(widths) > 6 else 0)
        ax.set_ylabel("pre-activation width (hi - lo)")
        handles = [h for h in ax.get_lines() if h.get_label() in ("interval", "CROWN")]
        ax.legend(handles=handles, **LEGEND_ABOVE)
        return _svg(fig, "widths")


def firing_svg(firing: Firing, names: Sequence[str]) -> str:
    """Share of inputs on which a gate changed each output element."""
    n = max(len(firing.by_output), len(names))
    labels = [names[k] if k < len(names) else f"Y_{k}" for k in range(n)]
    with _figure("firing", _width_for(n + 1), 2.8) as fig:
        ax = fig.add_subplot()
        rates = [100.0 * firing.output_rate(k) for k in range(n)]
        all_label, all_rate = "any output", 100.0 * firing.rate
        bars = ax.bar([all_label, *labels], [all_rate, *rates], color=[FIRED] + [AFTER] * n)
        ax.bar_label(bars, labels=[f"{r:.2f}%" for r in [all_rate, *rates]], fontsize=7)
        ax.set_ylabel("% of inputs changed by a gate")
        ax.set_ylim(0, max([all_rate, *rates, 1.0]) * 1.2)
        return _svg(fig, "firing")
