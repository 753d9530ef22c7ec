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

from typing import Any

# Importing a command module registers its commands on the app.
from relugate.compiler import (  # noqa: F401
    cli_bench,
    cli_build,
    cli_characterize,
    cli_project,
    cli_report,
    cli_run,
    cli_serve,
    cli_verify,
)
from relugate.compiler.cli_app import app

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> Any:
    return app(args=argv, prog_name="relugate")
