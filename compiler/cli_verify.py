"""``relugate verify``, ``verify-batch`` and ``stability``: the analyses on their own."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from relugate.compiler.cli_app import app, err, guard, out, progress_spinner
from relugate.compiler.tables import stability_table


@app.command()
def verify(
    model: Annotated[Path, typer.Argument(help="ONNX model file.")],
    spec: Annotated[
        list[Path], typer.Option("--spec", help="VNN-LIB property; repeat for several.")
    ],
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds before answering unknown.", min=0.0)
    ] = 60.0,
    json_file: Annotated[
        Path | None, typer.Option("--json", help="Write the result as JSON to this file.")
    ] = None,
    vnncomp: Annotated[
        Path | None,
        typer.Option("--vnncomp", help="Write a VNN-COMP result file (sat/unsat/timeout)."),
    ] = None,
) -> None:
    """Decide whether MODEL satisfies the properties: holds, violated (with a checked
    counterexample) or unknown. Exit code 0 for any verdict."""
    from relugate.compiler.verify import verify_model

    with guard(), progress_spinner() as progress:
        progress.add_task("verifying", total=None)
        result = verify_model(model, spec, timeout=timeout)
    with guard():
        if json_file is not None:
            json_file.write_text(json.dumps(result.to_json(), indent=2) + "\n")
        if vnncomp is not None:
            vnncomp.write_text(result.vnncomp())
    colour = {"holds": "green", "violated": "red", "unknown": "yellow"}[result.verdict]
    out.print(
        f"[bold {colour}]{result.verdict}[/] (method: {result.method}, {result.seconds:.2f} s)",
        highlight=False,
    )
    if result.counterexample is not None:
        out.print(f"counterexample input: {result.counterexample['input']}", highlight=False)
        out.print(f"output (onnxruntime): {result.counterexample['output']}", highlight=False)


@app.command("verify-batch")
def verify_batch(
    instances: Annotated[
        Path, typer.Argument(help="VNN-COMP instances.csv: onnx, vnnlib, timeout per row.")
    ],
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Output folder (written atomically).")
    ],
    workers: Annotated[
        int | None,
        typer.Option("--workers", help="Parallel workers (default: CPU count).", min=1),
    ] = None,
    backend: Annotated[
        str, typer.Option("--backend", help="auto (dask if installed), local, dask or ray.")
    ] = "auto",
    scheduler: Annotated[
        str | None, typer.Option("--scheduler", help="Dask scheduler or Ray cluster address.")
    ] = None,
    timeout_scale: Annotated[
        float, typer.Option("--timeout-scale", help="Multiply every timeout by this.", min=0.0)
    ] = 1.0,
    limit: Annotated[
        int | None, typer.Option("--limit", help="Run only the first N instances.", min=1)
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing output folder.")
    ] = False,
) -> None:
    """Verify every instance of INSTANCES in parallel; write OUT/results.jsonl, results.csv,
    report.json and VNN-COMP result files. Exit code 0 whatever the verdicts."""
    from relugate.compiler import batch

    with guard():
        progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            transient=True,
        )
        with progress:
            task = progress.add_task("verifying", total=None)

            def on_done(o: batch.Outcome) -> None:
                progress.update(task, advance=1, description=f"{o.network} {o.spec}: {o.verdict}")

            outcomes, report = batch.verify_batch(
                instances,
                output,
                backend=backend,
                workers=workers,
                scheduler=scheduler,
                timeout_scale=timeout_scale,
                limit=limit,
                overwrite=force,
                on_start=lambda n: progress.update(task, total=n),
                on_done=on_done,
            )
    out.print(batch.summary_table(outcomes, report))
    for o in outcomes:
        if o.verdict == "error":
            out.print(f"[red]error[/] {escape(f'{o.network} {o.spec}: {o.message}')}")
    out.print(f"wrote [bold]{escape(str(output))}[/]", highlight=False)


@app.command()
def stability(
    model: Annotated[Path, typer.Argument(help="ONNX model file.")],
    spec: Annotated[
        list[Path] | None, typer.Option("--spec", help="VNN-LIB property giving the domain.")
    ] = None,
    input_box: Annotated[
        list[str] | None, typer.Option("--input-box", help="Input interval 'lo,hi' (see compile).")
    ] = None,
    method: Annotated[str, typer.Option("--method", help="interval or crown.")] = "crown",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Per ReLU layer, how many neurons the analysis proves always active or inactive."""
    from relugate.compiler.compile import load_properties, resolve_domain
    from relugate.compiler.errors import BadSpec
    from relugate.compiler.frontend import load_model
    from relugate.compiler.importer import import_network
    from relugate.passes.analysis.stability import ANALYSES, stability_report

    with guard():
        if method not in ANALYSES:
            raise BadSpec(f"--method must be one of {sorted(ANALYSES)}, not {method!r}")
        net = import_network(load_model(model))
        props = load_properties(spec or [], net)
        domain = resolve_domain(props, input_box or [], net)
        if domain is None:
            raise BadSpec("stability needs a domain: give --spec or --input-box")
        rows = [layer.to_json() for layer in stability_report(net, domain, method)]
    if as_json:
        out.print_json(json.dumps(rows))
    else:
        out.print(stability_table(rows, method))
