"""``relugate report``: what a bundle's compile did, as tables or one HTML page."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from relugate.compiler.cli_app import app, guard, out, progress_spinner
from relugate.compiler.errors import BadInput, BundleError


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``path`` through a temporary file beside it and one rename: a reader never
    sees half a page, and a failure leaves any previous file as it was."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise BundleError(f"cannot write {path}: no folder {folder}")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise BundleError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise BundleError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@app.command()
def report(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder written by compile.")],
    html: Annotated[
        bool, typer.Option("--html", help="Write one self-contained HTML page.")
    ] = False,
    output: Annotated[
        Path, typer.Option("-o", "--output", help="The HTML file to write (with --html).")
    ] = Path("report.html"),
    stats: Annotated[
        Path | None,
        typer.Option("--stats", help="Telemetry: JSON of the runtime's model.stats()."),
    ] = None,
    sample: Annotated[
        int,
        typer.Option(
            "--sample", help="Measure gate firing on N uniform samples of the domain.", min=0
        ),
    ] = 0,
    seed: Annotated[int, typer.Option("--seed", help="Seed for --sample.")] = 0,
    bounds: Annotated[
        str,
        typer.Option(
            "--bounds", help="Bound widths per layer: crown (and interval), interval, none."
        ),
    ] = "crown",
) -> None:
    """Show what compile did to BUNDLE: passes, ReLUs per layer, bound widths, gates and
    proofs, fidelity, and gate firing rates (from --stats or --sample); --html writes a page."""
    from relugate.compiler.report_data import (
        BOUND_METHODS,
        gather,
        n_outputs,
        read_bundle,
        read_stats,
        sample_firing,
    )

    with guard():
        if stats is not None and sample:
            raise BadInput("give --stats or --sample, not both")
        if bounds not in BOUND_METHODS:
            raise BadInput(f"--bounds must be one of {list(BOUND_METHODS)}, not {bounds!r}")
        report_json, _ = read_bundle(bundle)  # a bad bundle fails before any work
        firing = None
        if stats is not None:
            firing = read_stats(stats, n_outputs(report_json))
        with progress_spinner() as progress:
            task = progress.add_task("gathering", total=None)
            if sample:
                progress.update(task, description=f"running the bundle on {sample:,} samples")
                firing = sample_firing(bundle, sample, seed)
            progress.update(task, description=f"bounds ({bounds})")
            data = gather(bundle, bounds, firing)
            if html:
                from relugate.compiler.report_html import render

                progress.update(task, description="drawing")
                page = render(data)
        if html:
            write_text_atomic(output, page)
    if html:
        out.print(f"wrote [bold]{escape(str(output))}[/]", highlight=False)
        return
    from relugate.compiler.report_tables import report_tables

    for part in report_tables(data):
        out.print(escape(part) if isinstance(part, str) else part, highlight=False)
