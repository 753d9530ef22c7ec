"""``relugate bench``: latency and throughput of a bundle against its original model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from relugate.compiler.cli_app import app, guard, out


@app.command()
def bench(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder (relugate compile -o).")],
    original: Annotated[
        Path, typer.Option("--original", help="The original ONNX model the bundle was built from.")
    ],
    batches: Annotated[str, typer.Option("--batches", help="Comma-separated batch sizes.")] = (
        "1,1024"
    ),
    rounds: Annotated[int, typer.Option("--rounds", help="Interleaved rounds.", min=1)] = 5,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write the rows as JSON.")
    ] = None,
) -> None:
    """Time the original in onnxruntime, the original in TVM and the bundle, side by side
    in one run (one thread; inputs uniform in the bundle's domain)."""
    from relugate.compiler.atomic import write_json_atomic
    from relugate.compiler.bench import bench as run_bench
    from relugate.compiler.errors import BadSpec

    with guard():
        try:
            sizes = [int(b) for b in batches.split(",") if b.strip()]
        except ValueError as exc:
            raise BadSpec(f"--batches must be comma-separated integers, not {batches!r}") from exc
        if not sizes or min(sizes) < 1:
            raise BadSpec(f"--batches must be positive integers, not {batches!r}")
        rows = run_bench(bundle, original, sizes, rounds)
        table = Table("batch", "engine", "us per call", "rows per second", "vs onnxruntime")
        for r in rows:
            table.add_row(
                str(r["batch"]),
                r["engine"],
                f"{r['us_per_call']:.1f}",
                f"{r['rows_per_second']:,.0f}",
                f"{r['ratio_to_onnxruntime']:.2f}",
            )
        out.print(table)
        if json_path is not None:
            write_json_atomic(json_path, {"rows": rows})
            out.print(json.dumps({"wrote": str(json_path)}))
