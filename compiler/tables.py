"""Rich tables for what the CLI prints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table


def inspect_tables(info: dict[str, Any]) -> list[Table]:
    # names and paths come from the user's files: escape them, or rich reads "[...]" as markup
    head = Table(title=escape(str(info["path"])), show_header=False)
    head.add_row("opset", str(info["opset"]))
    for io in ("inputs", "outputs"):
        for vi in info[io]:
            head.add_row(io[:-1], escape(f"{vi['name']} {vi['shape']}"))
    head.add_row("ops", escape(", ".join(f"{op} x{n}" for op, n in sorted(info["ops"].items()))))
    head.add_row("parameters (ONNX)", f"{info['onnx_params']:,}")
    head.add_row("supported", "yes" if info["supported"] else "[red]no[/]")
    if not info["supported"]:
        return [head]
    stats = info["stats"]
    head.add_row("ReLUs", f"{stats['relus']:,}")
    head.add_row("parameters", f"{stats['params']:,}")
    head.add_row("FLOPs / sample", f"{stats['flops']:,}")
    layers = Table(title="normalized layers")
    for col in ("#", "name", "layer", "in", "out", "params"):
        layers.add_column(col, justify="right" if col in ("#", "params") else "left")
    for row in info["layers"]:
        layers.add_row(
            str(row["index"]),
            escape(row["name"]),
            escape(row["what"]),
            str(tuple(row["in"])),
            str(tuple(row["out"])),
            f"{row['params']:,}",
        )
    return [head, layers]


def compile_tables(report: dict[str, Any]) -> list[Table]:
    name = Path(report["model"]["path"]).name
    table = Table(title=f"compiled {escape(name)}", min_width=64)
    table.add_column("")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    for key in ("layers", "relus", "params", "flops"):
        table.add_row(key, f"{report['before'][key]:,}", f"{report['after'][key]:,}")
    check = report["check"]
    table.caption = (
        f"checked against the original in onnxruntime on {check['samples']} inputs: "
        f"max relative error {check['max_relative_error']:.2g}"
    )
    return [table]


def pass_table(steps: list[dict[str, Any]]) -> Table:
    table = Table(title="passes")
    for col in ("pass", "changed", "ms", "ReLUs", "params"):
        table.add_column(col, justify="left" if col == "pass" else "right")
    for step in steps:
        table.add_row(
            step["name"],
            "yes" if step["changed"] else "no",
            f"{1000 * step['seconds']:.2f}",
            f"{step['relus_before']:,} -> {step['relus_after']:,}",
            f"{step['params_before']:,} -> {step['params_after']:,}",
        )
    return table


def stability_table(rows: list[dict[str, Any]], method: str) -> Table:
    table = Table(title=f"ReLU stability ({method})")
    for col in ("layer", "ReLUs", "always active", "always inactive", "unstable"):
        table.add_column(col, justify="left" if col == "layer" else "right")
    for row in rows:
        table.add_row(
            escape(row["layer"]),
            str(row["total"]),
            str(row["active"]),
            str(row["inactive"]),
            str(row["unstable"]),
        )
    return table
