"""``relugate build``: compile every model of a project config (``relugate.toml`` or
``[tool.relugate]`` in ``pyproject.toml``) and write one combined report."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from relugate.compiler.cli_app import app, err, guard, out, progress_spinner

if TYPE_CHECKING:
    from relugate.compiler.api import CompileOutcome
    from relugate.compiler.config import Entry


@app.command()
def build(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="Config file (default: ./relugate.toml, else the \\[tool.relugate] table "
            "of ./pyproject.toml).",
        ),
    ] = None,
    only: Annotated[
        list[str] | None,
        typer.Option("--only", help="Compile only this model (by name); repeat for several."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace existing output folders.")
    ] = False,
    report: Annotated[
        Path | None,
        typer.Option("--report", help="Combined report file (default: the config's report)."),
    ] = None,
) -> None:
    """Compile every model of the project config; exit with the worst exit code of them."""
    from relugate.compiler.config import find_config, load_config
    from relugate.compiler.project import build_project
    from relugate.compiler.step_report import summary_lines

    with guard():
        project = load_config(find_config(config))

        def on_entry(entry: Entry, outcome: CompileOutcome) -> None:
            for line in summary_lines(outcome.report, entry.name):
                out.print(line, highlight=False, markup=False)
            error = outcome.report["error"]
            if error is not None:
                err.print(
                    f"[bold red]{escape(entry.name)}[/] ({escape(error['kind'])}): "
                    f"{escape(error['message'])}",
                    highlight=False,
                )

        with progress_spinner() as progress:
            task = progress.add_task("loading", total=None)
            done = build_project(
                project,
                only or [],
                force,
                report,
                on_entry=on_entry,
                on_step=lambda name: progress.update(task, description=f"pass {name}"),
            )
        path = escape(str(report or project.report))
        counts = f"{sum(o.ok for o in done.outcomes.values())}/{len(done.outcomes)} compiled"
        out.print(f"build: {counts}, exit {done.exit_code}; wrote [bold]{path}[/]", highlight=False)
    if done.exit_code:
        raise typer.Exit(done.exit_code)
