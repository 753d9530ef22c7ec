"""The ``relugate`` command line.

Exit codes (stable; scripts depend on them):

====  ==========================================================
0     success
2     usage error (unknown option, missing argument)
3     bad input: unreadable/unsupported model, bad spec, bad array
4     a property could not be guaranteed
5     output folder or bundle problem
70    internal error (a bug: please report it with --debug output)
====  ==========================================================
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from relugate import __version__
from relugate.compiler import inspect as inspect_mod
from relugate.compiler.errors import INTERNAL_ERROR_EXIT, RelugateError
from relugate.compiler.tables import compile_tables, inspect_tables, pass_table, stability_table

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="relugate: compile ReLU networks into smaller, faster, provably equivalent and safe ones.",
    context_settings={"help_option_names": ["-h", "--help"]},
)
# Messages quote paths and node names from users' files: no emoji codes, no
# re-wrapping (logs keep paths whole), and markup escaped where text is quoted.
out = Console(emoji=False, soft_wrap=True)
err = Console(stderr=True, emoji=False, soft_wrap=True)
STATE = {"debug": False}


def _version(value: bool) -> None:
    if value:
        out.print(f"relugate {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    STATE["debug"] = debug


@contextmanager
def _guard() -> Iterator[None]:
    """Turn errors into one clear message and an exit code; tracebacks only with --debug."""
    try:
        yield
    except typer.Exit:
        raise
    except RelugateError as exc:
        if STATE["debug"]:
            err.print_exception()
        message = escape(str(exc))
        err.print(f"[bold red]error[/] ({exc.kind}): {message}", highlight=False, markup=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        err.print("[red]interrupted[/]")
        raise typer.Exit(130) from None
    except Exception as exc:
        if STATE["debug"]:
            err.print_exception()
        err.print(
            f"[bold red]internal error[/]: {exc.__class__.__name__}: {escape(str(exc))}\n"
            "This is a bug in relugate; rerun with --debug and report the traceback.",
            highlight=False,
        )
        raise typer.Exit(INTERNAL_ERROR_EXIT) from None


@app.command()
def inspect(
    model: Annotated[Path, typer.Argument(help="ONNX model file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Show a model's layers, ReLUs, ops, parameters, shapes, and whether relugate supports it."""
    with _guard():
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
    target: Annotated[
        str,
        typer.Option(
            "--target", help="Library to build with TVM: llvm (host CPU), aarch64, cuda, none."
        ),
    ] = "llvm",
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
) -> None:
    """Compile MODEL for the domain of its property and write OUT/model.onnx and OUT/report.json;
    with --spec, also verify each property and add proved output gates where it may fail
    (OUT/certificate.json)."""
    from relugate.compiler.compile import CompileOptions, compile_model

    with _guard(), _progress() as progress:
        task = progress.add_task("loading", total=None)

        def on_step(name: str) -> None:
            progress.update(task, description=f"pass {name}")

        options = CompileOptions(
            out_dir=output,
            overwrite=force,
            dump_ir=dump_ir,
            verify_each=verify_each,
            on_step=on_step,
            gates=not no_gates,
            gate_timeout=gate_timeout,
            pass_options={"stability": stability, "maxpool": "relu" if maxpool_to_relu else "keep"},
            target=None if target == "none" else target,
            batch=batch,
            tune_seconds=tune_seconds,
            tuning_db=tuning_db,
            policy=policy,
        )
        result = compile_model(model, options, specs=spec or [], input_box=input_box or [])
        progress.update(task, description="done")
    report = result.report
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
        what = (
            f"{len(report['gates'])} output gates for {gated} properties, proved"
            if gated
            else "every property holds: no gate"
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

    with _guard():
        summary = check_bundle(
            bundle, timeout, say=lambda line: out.print(line, highlight=False, markup=False)
        )
    out.print(
        f"[bold green]ok[/]: {summary['properties']} properties, {summary['gates']} gates, "
        f"{summary['cases']} cases proved",
        highlight=False,
    )


@app.command()
def run(
    model: Annotated[Path, typer.Argument(help="Bundle folder, or an ONNX model file.")],
    inputs: Annotated[Path, typer.Argument(help=".npy file: one input, or a batch (N, ...).")],
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Save outputs as .npy.")
    ] = None,
) -> None:
    """Run a compiled bundle (its TVM library, through relugate.runtime) or an ONNX model
    (relugate's float32 reference evaluator) on the inputs in a .npy file."""
    from relugate.compiler.errors import BadInput, BundleError

    with _guard():
        try:
            array = np.load(inputs, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise BadInput(f"{inputs}: not a readable .npy file ({exc})") from exc
        result = _run_bundle(model, array) if model.is_dir() else _run_onnx(model, array)
        if output is not None:
            try:
                with open(output, "wb") as f:  # np.save(path) would append .npy to other names
                    np.save(f, result)
            except OSError as exc:
                raise BundleError(f"{output}: cannot write ({exc.strerror})") from exc
            out.print(f"wrote {escape(str(output))} {result.shape}", highlight=False)
        else:
            np.set_printoptions(precision=6, suppress=True)
            out.print(result, highlight=False)


def _run_onnx(model: Path, array: np.ndarray) -> np.ndarray:
    from relugate.compiler.frontend import load_model
    from relugate.compiler.importer import import_network
    from relugate.runtime.checks import check_batch

    net = import_network(load_model(model))
    batch, single = check_batch(array, net.input.shape, net.input.has_batch, net.input.name)
    result = net.forward(batch, np.float32)
    return result.reshape(net.output.shape) if single else result


def _run_bundle(bundle: Path, array: np.ndarray) -> np.ndarray:
    from relugate import runtime

    model = runtime.load(bundle)
    result = model.run(array)
    stats = model.stats()
    err.print(f"runtime: {json.dumps(stats)}", highlight=False)
    return np.asarray(result)


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

    with _guard(), _progress() as progress:
        progress.add_task("verifying", total=None)
        result = verify_model(model, spec, timeout=timeout)
    with _guard():
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

    with _guard():
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

    with _guard():
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


@app.command()
def example(
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for the example files.")],
) -> None:
    """Train the shipped example network and write collision.onnx and collision.vnnlib."""
    from relugate.compiler.example import write_example

    with _guard():
        model_path, spec_path = write_example(output)
    out.print(f"wrote {escape(str(model_path))} and {escape(str(spec_path))}", highlight=False)


@app.command()
def passes() -> None:
    """List the compiler's passes in the order they run."""
    from relugate.compiler.pipeline import default_passes

    for index, p in enumerate(default_passes(), start=1):
        doc = (sys.modules[type(p).__module__].__doc__ or "").strip().split("\n\n")[0]
        out.print(f"{index}. [bold]{p.name}[/]: {escape(' '.join(doc.split()))}", highlight=False)


@contextmanager
def _progress() -> Iterator[Progress]:
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )
    with progress:
        yield progress


def main(argv: list[str] | None = None) -> Any:
    return app(args=argv, prog_name="relugate")
