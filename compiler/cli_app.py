"""The Typer application behind ``relugate``: the app, its consoles, the error guard
that turns exceptions into exit codes, and the progress display commands share.
Commands live in ``cli_*`` modules, registered by importing them in ``cli.py``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from relugate import __version__
from relugate.compiler.errors import INTERNAL_ERROR_EXIT, RelugateError

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
def guard() -> Iterator[None]:
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


@contextmanager
def progress_spinner() -> Iterator[Progress]:
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )
    with progress:
        yield progress
