"""``relugate serve``: the HTTP endpoint of ``relugate.runtime.serve`` from the full CLI.

The server itself needs only the runtime (``python -m relugate.runtime.serve`` in the
Docker runtime image); this command adds the CLI's error messages and exit codes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from relugate.compiler.cli_app import app, err, guard
from relugate.runtime.endpoint import MAX_BODY
from relugate.runtime.serve import MAX_CONNECTIONS


@app.command()
def serve(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder (written by relugate compile).")],
    host: Annotated[
        str, typer.Option("--host", help="Address to bind (0.0.0.0: every interface).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port (0: any free port).", min=0)] = 8080,
    max_body: Annotated[
        int, typer.Option("--max-body", help="Request body limit in bytes.", min=1)
    ] = MAX_BODY,
    max_connections: Annotated[
        int, typer.Option("--max-connections", help="Connections at once (more: 503).", min=1)
    ] = MAX_CONNECTIONS,
    access_log: Annotated[bool, typer.Option("--access-log", help="Log every request.")] = False,
) -> None:
    """Serve a bundle over HTTP: GET /health, POST /predict ({"inputs": [...]}), GET /stats
    (gate firings and out-of-domain counters).  Stops on Ctrl-C or SIGTERM."""
    from relugate.compiler.errors import BadInput
    from relugate.runtime.serve import make_server, run

    with guard():
        try:
            server = make_server(bundle, host, port, max_body, access_log, max_connections)
        except OSError as exc:  # address in use, permission denied
            raise BadInput(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
        err.print(f"serving {escape(str(bundle))} on {server.url}", highlight=False)
        run(server)
