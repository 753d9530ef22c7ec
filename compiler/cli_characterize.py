"""``relugate characterize``: where in the input box the property provably holds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from relugate.compiler.cli_app import app, err, guard, out


@app.command()
def characterize(
    model: Annotated[Path, typer.Argument(help="ONNX model file.")],
    spec: Annotated[Path, typer.Option("--spec", help="VNN-LIB property.")],
    output: Annotated[
        Path, typer.Option("-o", "--output", help="regions.json to write (atomically).")
    ],
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds of box splitting.", min=0.0)
    ] = 60.0,
    pattern_timeout: Annotated[
        float,
        typer.Option("--pattern-timeout", help="Seconds for activation patterns after.", min=0.0),
    ] = 20.0,
    method: Annotated[
        str,
        typer.Option("--method", help="crown (default), crown-widest, interval (plain bisection)."),
    ] = "crown",
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the boxes already in OUTPUT.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing OUTPUT.")] = False,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Also write a PNG of the regions.")
    ] = None,
    dims: Annotated[
        str, typer.Option("--dims", help="The two inputs the plot shows, e.g. 0,1.")
    ] = "0,1",
) -> None:
    """Split the property's input box into boxes proved safe (with the activation
    pattern each proof used), boxes with a counterexample confirmed in onnxruntime,
    and undecided boxes; then find activation patterns proved to imply the property.
    Progress is saved every few seconds; --resume continues an interrupted run."""
    from relugate.compiler.characterize_run import characterize_model
    from relugate.compiler.errors import BundleError
    from relugate.compiler.regions_plot import parse_dims, plot_regions, require_matplotlib
    from relugate.compiler.spec import read_vnnlib
    from relugate.passes.analysis.characterize import Characterization

    with guard():
        if output.exists() and not (resume or force):
            raise BundleError(f"{output} already exists; pass --resume or --force")
        if output.is_dir():
            raise BundleError(f"{output} is a folder, not a file")
        if plot is not None:
            require_matplotlib()
            plot_dims = parse_dims(dims, read_vnnlib(spec).n_inputs)
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[volumes]}"),
            TimeElapsedColumn(),
            console=err,
            transient=True,
        )
        with progress:
            task = progress.add_task("characterizing", total=1.0, volumes="")

            def on_round(state: Characterization) -> None:
                f = state.fractions()
                text = (
                    f"safe {100 * f['safe']:.2f}%  unsafe {100 * f['unsafe']:.2f}%  "
                    f"undecided {100 * f['undecided']:.2f}%  ({state.leaves.count} boxes)"
                )
                progress.update(task, completed=f["safe"] + f["unsafe"], volumes=text)

            _, data = characterize_model(
                model,
                spec,
                output,
                timeout=timeout,
                pattern_timeout=pattern_timeout,
                method=method,
                resume=resume,
                on_round=on_round,
            )
        if plot is not None:
            plot_regions(data, plot, plot_dims)
    vol = data["volume"]
    out.print(
        f"[green]safe {100 * vol['safe']:.3f}%[/]  [red]unsafe {100 * vol['unsafe']:.3f}%[/]  "
        f"[yellow]undecided {100 * vol['undecided']:.3f}%[/] of the input box "
        f"({len(data['boxes'])} boxes, {data['seconds']:.1f} s of splitting)",
        highlight=False,
    )
    items = data["patterns"].get("items", []) if data["patterns"] else []
    for case in data["patterns"].get("cases", []) if data["patterns"] else []:
        out.print(
            f"case {case['case']}: {case['patterns']} activation patterns proved to imply the "
            f"property; their regions hold ~{100 * case['union_estimate']:.1f}% of the box "
            f"(sampled; the safe boxes ~{100 * case['safe_boxes_estimate']:.1f}%)",
            highlight=False,
        )
    if items:
        best = min(items, key=lambda p: p["size"])
        out.print(
            f"smallest pattern: {best['size']} neurons, region ~"
            f"{100 * best['region_estimate']:.1f}% of the box ({best['method']})",
            highlight=False,
        )
    out.print(f"wrote [bold]{escape(str(output))}[/]", highlight=False)
    if plot is not None:
        out.print(f"wrote [bold]{escape(str(plot))}[/]", highlight=False)
