"""``relugate inspect``, ``compile``, ``check``, ``example`` and ``passes``: the commands that
look at a model and build a bundle."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from relugate.compiler import inspect as inspect_mod
from relugate.compiler.cli_app import app, err, guard, out, progress_spinner
from relugate.compiler.tables import compile_tables, inspect_tables, pass_table


@app.command()
def inspect(
    model: Annotated[Path, typer.Argument(help="ONNX model file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Show a model's layers, ReLUs, ops, parameters, shapes, and whether relugate supports it."""
    with guard():
        info = inspect_mod.inspect_model(model)
        if as_json:
            out.print_json(json.dumps(info))
        else:
            for table in inspect_tables(info):
                out.print(table)
        if not info["supported"]:
            err.print(f"[bold red]unsupported[/]: {escape(info['reason'])}", highlight=False)
            raise typer.Exit(3)


@app.command()
def compile(
    model: Annotated[Path, typer.Argument(help="ONNX model file.")],
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Output folder (written atomically).")
    ],
    spec: Annotated[
        list[Path] | None, typer.Option("--spec", help="VNN-LIB property; repeat for several.")
    ] = None,
    input_box: Annotated[
        list[str] | None,
        typer.Option(
            "--input-box",
            help="Input interval 'lo,hi': once per input in order, or once for all inputs.",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing output folder.")
    ] = False,
    time_passes: Annotated[
        bool, typer.Option("--time-passes", help="Print the time of every pass.")
    ] = False,
    dump_ir: Annotated[
        Path | None,
        typer.Option("--dump-ir", help="Write the model as ONNX after every pass here."),
    ] = None,
    verify_each: Annotated[
        bool,
        typer.Option(
            "--verify-each", help="After every pass, compare with its input in onnxruntime."
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    gate_timeout: Annotated[
        float,
        typer.Option("--gate-timeout", help="Verification seconds per property.", min=0.0),
    ] = 60.0,
    gate_layer: Annotated[
        str,
        typer.Option(
            "--gate-layer",
            help="Where gates go: auto (output gates; a hidden-layer clamp where none can be "
            "built or proved), output, hidden (the hidden layer that keeps most safe "
            "behaviour), or a hidden layer number N (from 0).",
        ),
    ] = "auto",
    no_gates: Annotated[
        bool,
        typer.Option("--no-gates", help="With --spec: skip verification, gates and certificate."),
    ] = False,
    stability: Annotated[
        str,
        typer.Option(
            "--stability",
            help="Analysis for stable_relu: auto (split up to 16 inputs, else crown), "
            "crown, split, interval, lp, milp.",
        ),
    ] = "auto",
    maxpool_to_relu: Annotated[
        bool,
        typer.Option("--maxpool-to-relu", help="Rewrite MaxPool into proved ReLU max trees."),
    ] = False,
    linear_skip: Annotated[
        bool,
        typer.Option(
            "--linear-skip",
            help="Stably active units of partly active layers leave the ReLU for a linear "
            "skip path where that lowers the parameter count.",
        ),
    ] = False,
    target: Annotated[
        str,
        typer.Option(
            "--target", help="Library to build with TVM: llvm (host CPU), aarch64, cuda, none."
        ),
    ] = "llvm",
    mcpu: Annotated[
        str | None,
        typer.Option(
            "--mcpu",
            help="CPU to build for (LLVM name, e.g. x86-64-v3, cortex-a72, generic); "
            "default: this host's CPU (llvm), generic (aarch64).",
        ),
    ] = None,
    regions: Annotated[
        Path | None,
        typer.Option(
            "--regions",
            help="regions.json from `relugate characterize` on this model: shipped in the "
            "bundle; the runtime reports inputs in proved-safe regions.",
        ),
    ] = None,
    batch: Annotated[
        int | None, typer.Option("--batch", help="Fixed batch size (default: any).", min=1)
    ] = None,
    tune_seconds: Annotated[
        float,
        typer.Option("--tune-seconds", help="MetaSchedule budget (needs --batch).", min=0.0),
    ] = 0.0,
    tuning_db: Annotated[
        Path | None, typer.Option("--tuning-db", help="Tuning database folder (reused).")
    ] = None,
    policy: Annotated[
        str,
        typer.Option("--policy", help="Out-of-domain inputs at runtime: reject, clamp, flag."),
    ] = "reject",
    require: Annotated[
        str | None,
        typer.Option(
            "--require",
            help="What must hold: proof (every property proved, no gate), repair (proved or "
            "repaired by proved gates; the default), none (compile anyway; the report says so).",
        ),
    ] = None,
    report_path: Annotated[
        Path | None,
        typer.Option(
            "--report",
            help="Write the pipeline report (JSON) here, also when the compile fails.",
        ),
    ] = None,
) -> None:
    """Compile MODEL for the domain of its property and write OUT/model.onnx and OUT/report.json;
    with --spec, also verify each property and add proved output gates where it may fail
    (OUT/certificate.json).  Exit codes: 0 ok, 2 usage, 3 bad input, 4 a property could
    not be guaranteed, 5 output problem, 70 internal error."""
    from relugate.compiler.api import run_compile, write_report
    from relugate.compiler.step_report import summary_lines

    with guard():
        with progress_spinner() as progress:
            task = progress.add_task("loading", total=None)

            def on_step(name: str) -> None:
                progress.update(task, description=f"pass {name}")

            outcome = run_compile(
                model,
                spec or [],
                output,
                input_box=input_box or [],
                require=require,
                target=target,
                mcpu=mcpu,
                regions=regions,
                policy=policy,
                gates=not no_gates,
                gate_timeout=gate_timeout,
                gate_layer=gate_layer,
                stability=stability,
                maxpool_to_relu=maxpool_to_relu,
                linear_skip=linear_skip,
                batch=batch,
                tune_seconds=tune_seconds,
                tuning_db=tuning_db,
                force=force,
                dump_ir=dump_ir,
                verify_each=verify_each,
                on_step=on_step,
            )
            progress.update(task, description="done")
        if report_path is not None:
            write_report(report_path, outcome.report)
        if outcome.ok:
            _print_compiled(outcome.report["compile"], output, as_json, time_passes)
        if not as_json:
            for line in summary_lines(outcome.report):
                out.print(line, highlight=False, markup=False)
        outcome.raise_for_status()


def _print_compiled(report: dict[str, Any], output: Path, as_json: bool, time_passes: bool) -> None:
    if as_json:
        out.print_json(json.dumps(report))
        return
    for table in compile_tables(report):
        out.print(table)
    if time_passes:
        out.print(pass_table(report["passes"]))
    to = escape(str(output))
    out.print(f"wrote [bold]{to}/model.onnx[/] and [bold]{to}/report.json[/]", highlight=False)
    if "backend" in report:
        built = report["backend"]
        out.print(
            f"built the {built['target']['name']} library in {built['compile_seconds']} s; "
            f"wrote [bold]{to}/manifest.json[/]",
            highlight=False,
        )
    if "gates" in report:
        gated = sum(1 for v in report["verdict_original"] if v["gated"])
        hidden = report.get("hidden_gate")
        what = (
            "every property holds: no gate"
            if not gated
            else f"{len(report['gates'])} output gates for {gated} properties, proved"
            if hidden is None
            else f"a gate at hidden layer {hidden['layer']} for {gated} properties, proved"
        )
        out.print(f"{what}; wrote [bold]{to}/certificate.json[/]", highlight=False)


@app.command()
def check(
    bundle: Annotated[Path, typer.Argument(help="Folder written by compile --spec.")],
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", help="Seconds to re-verify each ungated property.", min=0.0),
    ] = None,
) -> None:
    """Re-verify BUNDLE's certificate independently: hashes, output ranges, gates, proofs."""
    from relugate.compiler.check import check_bundle

    with guard():
        summary = check_bundle(
            bundle, timeout, say=lambda line: out.print(line, highlight=False, markup=False)
        )
    out.print(
        f"[bold green]ok[/]: {summary['properties']} properties, {summary['gates']} gates, "
        f"{summary['cases']} cases proved",
        highlight=False,
    )


@app.command()
def example(
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for the example files.")],
) -> None:
    """Train the shipped example network and write collision.onnx and collision.vnnlib."""
    from relugate.compiler.example import write_example

    with guard():
        model_path, spec_path = write_example(output)
    out.print(f"wrote {escape(str(model_path))} and {escape(str(spec_path))}", highlight=False)


@app.command()
def passes() -> None:
    """List the compiler's passes in the order they run."""
    from relugate.compiler.pipeline import default_passes

    for index, p in enumerate(default_passes(), start=1):
        doc = (sys.modules[type(p).__module__].__doc__ or "").strip().split("\n\n")[0]
        out.print(f"{index}. [bold]{p.name}[/]: {escape(' '.join(doc.split()))}", highlight=False)
