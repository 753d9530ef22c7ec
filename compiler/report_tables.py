"""Rich tables for ``relugate report`` without ``--html``: the same numbers as the page."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from relugate.compiler.report_data import BundleReport
from relugate.compiler.report_html import page_context
from relugate.compiler.tables import pass_table


def _table(title: str, columns: list[str], rows: list[list[Any]], left: int = 1) -> Table:
    table = Table(title=title)
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i < left else "right")
    for row in rows:
        table.add_row(*(escape(str(v)) for v in row))
    return table


def report_tables(data: BundleReport) -> list[Table | str]:
    """The text summary: tables, and one-line notes where a section is empty."""
    ctx = page_context(data)
    parts: list[Table | str] = []
    head = Table(title=f"relugate report: {escape(ctx['model_name'])}", show_header=False)
    head.add_row("bundle", escape(ctx["bundle"]))
    for card in ctx["cards"]:
        head.add_row(card["label"], escape(f"{card['value']}  {card['detail']}".strip()))
    head.caption = escape(ctx["domain_note"])
    parts.append(head)
    parts.append(pass_table(data.passes))
    if ctx["check_note"]:
        parts.append(ctx["check_note"])
    parts.append(
        _table(
            f"ReLUs per layer (before: {ctx['relu_source']})",
            ["layer", "before", "after", "removed", "inactive removed", "active", "unstable"],
            [
                [r[k] for k in ("name", "before", "after", "removed")]
                + [r[k] for k in ("inactive_removed", "active", "unstable")]
                for r in ctx["relu_rows"]
            ],
        )
    )
    if ctx["width_rows"]:
        cols = ["layer", "units", "interval median", "interval max", "unstable (interval)"]
        keys = ["name", "units", "i_med", "i_max", "i_unstable"]
        if ctx["has_crown"]:
            cols += ["CROWN median", "CROWN max", "unstable (CROWN)"]
            keys += ["c_med", "c_max", "c_unstable"]
        rows = [[w[k] for k in keys] for w in ctx["width_rows"]]
        parts.append(_table("pre-activation bound widths on the domain", cols, rows))
    else:
        parts.append(ctx["widths_note"])
    if ctx["verdicts"]:
        rows = [
            [v["source"], v["verdict"], v["method"], v["seconds"], v["gated"]]
            for v in ctx["verdicts"]
        ]
        parts.append(
            _table("properties", ["property", "verdict", "method", "s", "gated"], rows, left=3)
        )
    if ctx["gates"]:
        rows = [
            [g["index"], g["where"], g["formula"], g["delta"], g["switch"]] for g in ctx["gates"]
        ]
        cols = ["#", "property / case", "gate", "delta", "switches off"]
        parts.append(_table("gates", cols, rows, left=0))
    if ctx["proofs"]:
        rows = [[c["where"], c["status"], c["millis"], c["modes"]] for c in ctx["proofs"]]
        parts.append(_table("proofs", ["property / case", "proof", "ms", "modes"], rows, left=2))
    if ctx["fidelity"]:
        keys = ["source", "samples", "same_argmax", "close", "safe_samples", "safe_close"]
        keys.append("unsafe_gated")
        cols = ["property", "samples", "same argmax", "close", "safe samples", "safe close"]
        cols.append("unsafe gated")
        rows = [[f[k] for k in keys] for f in ctx["fidelity"]]
        parts.append(_table("fidelity", cols, rows))
    firing = ctx["firing"]
    if firing is not None:
        rows = [[r["name"], r["count"], r["rate"], r["gates"]] for r in firing["rows"]]
        title = f"gate firing: {firing['fired']} of {firing['inputs']} inputs ({firing['rate']})"
        table = _table(title, ["output", "changed", "rate", "gates"], rows)
        table.columns[3].justify = "left"
        table.caption = escape(f"{firing['source']}; out of domain {firing['out_of_domain']}")
        parts.append(table)
    return parts
