"""``relugate report --html``: one self-contained page (inline CSS, inline SVG figures,
no script and no network fetch) from a gathered ``BundleReport``.

The page is a Jinja2 template with autoescaping on: every value that comes
from users' files (model and spec paths, layer names, gate formulas) is
escaped by default; only the SVG text matplotlib wrote is marked safe.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from relugate import __version__
from relugate.compiler.report_data import BundleReport, n_outputs
from relugate.compiler.report_plots import (
    MissingReportExtra,
    bound_widths_svg,
    firing_svg,
    pass_steps_svg,
    relu_layers_svg,
)

MAX_DOMAIN_ROWS = 16

TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="relugate {{ version }}">
<title>relugate report: {{ model_name }}</title>
<style>
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2328;
       margin: 0 auto; max-width: 1100px; padding: 1.5em 2em 4em; }
h1 { font-size: 1.6em; margin-bottom: .2em; }
h2 { font-size: 1.2em; border-bottom: 1px solid #d0d7de; padding-bottom: .2em; margin-top: 2em;
}
.sub { color: #59636e; margin-top: 0; word-break: break-all; }
table { border-collapse: collapse; margin: .6em 0 1em; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d0d7de; padding: .25em .6em; text-align: right; }
th { background: #f6f8fa; }
td.l, th.l { text-align: left; }
td.formula { font-family: ui-monospace, monospace; text-align: left; }
.cards { display: flex; flex-wrap: wrap; gap: .8em; margin: 1em 0; }
.card { border: 1px solid #d0d7de; border-radius: 6px; padding: .5em .9em; min-width: 9em; }
.card b { display: block; font-size: 1.3em; }
.card span { color: #59636e; font-size: .9em; }
figure.plot { margin: .5em 0 1em; }
figure.plot svg { max-width: 100%; height: auto; }
figcaption, .note { color: #59636e; font-size: .92em; }
.ok { color: #1a7f37; font-weight: 600; }
.bad { color: #d1242f; font-weight: 600; }
.warn { color: #9a6700; font-weight: 600; }
</style>
</head>
<body>
<h1>relugate report: {{ model_name }}</h1>
<p class="sub">bundle {{ bundle }} &middot; model sha256 {{ model_sha }} &middot;
compiled by relugate {{ compiled_by }}{% if target %} for {{ target }}{% endif %}
&middot; page by relugate {{ version }}</p>

<div class="cards" id="summary">
{% for card in cards %}<div class="card"><span>{{ card.label }}</span><b>{{ card.value }}</b>
<span>{{ card.detail }}</span></div>
{% endfor %}</div>

<h2 id="domain">Domain</h2>
{% if domain_rows %}
<table><tr><th class="l">input</th><th>lo</th><th>hi</th></tr>
{% for row in domain_rows %}<tr><td class="l">{{ row.name }}</td><td>{{ row.lo }}</td>
<td>{{ row.hi }}</td></tr>
{% endfor %}</table>
{% endif %}
<p class="note">{{ domain_note }}</p>

<h2 id="pipeline">Pipeline steps</h2>
<table id="passes">
<tr><th class="l">pass</th><th>changed</th><th>ms</th><th>ReLUs</th><th>parameters</th>
<th>FLOPs</th><th>layers</th></tr>
{% for p in passes %}<tr><td class="l">{{ p.name }}</td><td>{{ p.changed }}</td>
<td>{{ p.ms }}</td>
<td>{{ p.relus }}</td><td>{{ p.params }}</td><td>{{ p.flops }}</td><td>{{ p.layers }}</td></tr>
{% endfor %}</table>
{% if pass_plot %}<figure class="plot" id="plot-passes">{{ pass_plot }}
<figcaption>ReLUs, parameters and FLOPs after each pass, as a share of the imported
model's.</figcaption></figure>{% endif %}
<p class="note">{{ check_note }}</p>

<h2 id="relus">ReLUs per layer</h2>
{% if relu_plot %}<figure class="plot" id="plot-relus">{{ relu_plot }}
<figcaption>ReLU units per layer: before ({{ relu_source }}) and after (the bundle's
model.onnx).</figcaption></figure>
<table id="relu-table"><tr><th class="l">layer</th><th>before</th><th>after</th>
<th>removed</th><th>proved inactive (removed)</th><th>proved active</th><th>unstable</th></tr>
{% for r in relu_rows %}<tr><td class="l">{{ r.name }}</td><td>{{ r.before }}</td>
<td>{{ r.after }}</td><td>{{ r.removed }}</td><td>{{ r.inactive_removed }}</td>
<td>{{ r.active }}</td><td>{{ r.unstable }}</td></tr>
{% endfor %}</table>
<p class="note">The last three columns are stable_relu's account on the domain (active and
unstable: its last round). Units removed beyond the proved-inactive ones were eliminated as
linearly dependent; proved-active units keep their ReLU unless the whole layer is active.</p>
{% else %}<p class="note">The network has no ReLU layer.</p>{% endif %}

<h2 id="bounds">Bound widths</h2>
{% if width_plot %}<figure class="plot" id="plot-widths">{{ width_plot }}
<figcaption>Pre-activation bound widths (hi - lo) of each ReLU layer of the final network on
the domain,
sound for float32 execution; boxes: quartiles and median, whiskers: min and max.</figcaption>
</figure>
<table id="width-table"><tr><th class="l">layer</th><th>units</th><th>interval median</th>
<th>interval max</th>
<th>unstable (interval)</th>{% if has_crown %}<th>CROWN median</th><th>CROWN max</th>
<th>unstable (CROWN)</th>{% endif %}</tr>
{% for w in width_rows %}<tr><td class="l">{{ w.name }}</td><td>{{ w.units }}</td>
<td>{{ w.i_med }}</td><td>{{ w.i_max }}</td>
<td>{{ w.i_unstable }}</td>{% if has_crown %}<td>{{ w.c_med }}</td><td>{{ w.c_max }}</td>
<td>{{ w.c_unstable }}</td>{% endif %}</tr>
{% endfor %}</table>
{% else %}<p class="note">{{ widths_note }}</p>{% endif %}

<h2 id="properties">Properties, gates and proofs</h2>
{% if verdicts %}
<table id="verdicts"><tr><th class="l">property</th><th class="l">verdict (original)</th>
<th class="l">method</th><th>seconds</th><th class="l">gated</th></tr>
{% for v in verdicts %}<tr><td class="l">{{ v.source }}</td>
<td class="l {{ v.css }}">{{ v.verdict }}</td><td class="l">{{ v.method }}</td>
<td>{{ v.seconds }}</td><td class="l">{{ v.gated }}</td></tr>
{% endfor %}</table>
{% else %}<p class="note">No verdicts, gates or proofs: compiled without a property,
or with --no-gates.</p>
{% endif %}
{% if gates %}
<table id="gates"><tr><th>#</th><th class="l">property / case</th><th class="l">gate</th>
<th>delta</th><th class="l">switches off outside its box</th></tr>
{% for g in gates %}<tr><td>{{ g.index }}</td><td class="l">{{ g.where }}</td>
<td class="formula">{{ g.formula }}</td>
<td>{{ g.delta }}</td><td class="l">{{ g.switch }}</td></tr>
{% endfor %}</table>
{% elif verdicts %}<p class="note">No gate: every property holds on the compiled network.</p>
{% endif %}
{% if proofs %}
<table id="proofs"><tr><th class="l">property / case</th><th class="l">proof</th><th>ms</th>
<th class="l">gate modes</th></tr>
{% for c in proofs %}<tr><td class="l">{{ c.where }}</td>
<td class="l {{ c.css }}">{{ c.status }}</td><td>{{ c.millis }}</td>
<td class="l">{{ c.modes }}</td></tr>
{% endfor %}</table>
<p class="note">{{ proof_method }}</p>
{% endif %}

<h2 id="fidelity">Fidelity</h2>
{% if fidelity %}
<table id="fidelity-table"><tr><th class="l">property</th><th>samples</th><th>same argmax</th>
<th>same argmin</th><th>close</th>
<th>original-safe samples</th><th>safe: same argmax</th><th>safe: close</th><th>unsafe after
gates</th></tr>
{% for f in fidelity %}<tr><td class="l">{{ f.source }}</td><td>{{ f.samples }}</td>
<td>{{ f.same_argmax }}</td><td>{{ f.same_argmin }}</td>
<td>{{ f.close }}</td><td>{{ f.safe_samples }}</td><td>{{ f.safe_same_argmax }}</td>
<td>{{ f.safe_close }}</td><td class="{{ f.css }}">{{ f.unsafe_gated }}</td></tr>
{% endfor %}</table>
<p class="note">Agreement of the compiled (gated) model with the original on uniform samples of
each
property's box; "close": every output within 1e-5 relative to the original.</p>
{% else %}<p class="note">No fidelity figures: the bundle was compiled without a property or
without gates.</p>{% endif %}

<h2 id="firing">Gate firing rates</h2>
{% if firing %}
<p>{{ firing.inputs }} inputs ({{ firing.source }}): a gate changed the output of
<b>{{ firing.fired }}</b> ({{ firing.rate }}); out of domain {{ firing.out_of_domain }}
(rejected {{ firing.rejected }}, clamped {{ firing.clamped }}, flagged
{{ firing.flagged }}).</p>
{% if firing_plot %}<figure class="plot" id="plot-firing">{{ firing_plot }}
<figcaption>Share of inputs on which a gate changed each output element.</figcaption>
</figure>{% endif %}
<table id="firing-table"><tr><th class="l">output</th><th>inputs changed</th><th>rate</th>
<th class="l">gates on it</th></tr>
{% for row in firing.rows %}<tr><td class="l">{{ row.name }}</td><td>{{ row.count }}</td>
<td>{{ row.rate }}</td><td class="formula">{{ row.gates }}</td></tr>
{% endfor %}</table>
{% else %}<p class="note">No telemetry given: pass <code>--stats stats.json</code> (the JSON of
the runtime's
<code>model.stats()</code>) or <code>--sample N</code> to run the bundle on N uniform samples
of its domain.</p>{% endif %}
</body>
</html>
"""


# -- formatting ------------------------------------------------------------------------


def _n(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) else "-"


def _pct(value: object) -> str:
    return f"{100 * value:.2f}%" if isinstance(value, int | float) else "-"


def _g(value: object, digits: int = 3) -> str:
    return f"{value:.{digits}g}" if isinstance(value, int | float) else "-"


def _arrow(step: dict[str, Any], key: str) -> str:
    a, b = step.get(f"{key}_before"), step.get(f"{key}_after")
    if not isinstance(a, int) or not isinstance(b, int):
        return "-"
    return _n(a) if a == b else f"{_n(a)} → {_n(b)}"


def _css(verdict: object) -> str:
    return {"holds": "ok", "unsat": "ok", "trivial": "ok", "violated": "bad"}.get(
        str(verdict), "warn"
    )


def _where(item: dict[str, Any]) -> str:
    return f"{int(item.get('property', 0)) + 1} / {int(item.get('case', 0)) + 1}"


def _reduction(before: int, after: int) -> str:
    return f"-{100 * (before - after) / before:.1f}%" if before else ""


# -- context ---------------------------------------------------------------------------


def _cards(data: BundleReport) -> list[dict[str, str]]:
    before, after = data.report["before"], data.report["after"]
    cards = [
        {
            "label": label,
            "value": f"{_n(before[key])} → {_n(after[key])}",
            "detail": _reduction(before[key], after[key]),
        }
        for key, label in (("relus", "ReLUs"), ("params", "parameters"), ("flops", "FLOPs"))
    ]
    if data.verdicts:
        gated = sum(1 for v in data.verdicts if v.get("gated"))
        cards.append(
            {
                "label": "properties",
                "value": str(len(data.verdicts)),
                "detail": f"{gated} repaired by {len(data.gates)} gates" if gated else "all hold",
            }
        )
    if data.firing is not None:
        cards.append(
            {
                "label": "gate firing",
                "value": _pct(data.firing.rate),
                "detail": f"of {_n(data.firing.inputs)} inputs",
            }
        )
    return cards


def _domain(report: dict[str, Any]) -> tuple[list[dict[str, str]], str]:
    domain = report.get("domain")
    if domain is None:
        return [], "No domain: compiled without a property or input box (no reduction on a domain)."
    lo, hi = domain["lo"], domain["hi"]
    note = f"{len(lo)} inputs; every claim of the bundle holds for inputs in this box."
    if len(lo) > MAX_DOMAIN_ROWS:
        note = (
            f"{len(lo)} inputs, lo in [{_g(min(lo))}, {_g(max(lo))}], hi in "
            f"[{_g(min(hi))}, {_g(max(hi))}]; every claim of the bundle holds in this box."
        )
        return [], note
    rows = [
        {"name": f"X_{i}", "lo": _g(a, 6), "hi": _g(b, 6)}
        for i, (a, b) in enumerate(zip(lo, hi, strict=True))
    ]
    return rows, note


def _widths(data: BundleReport) -> list[dict[str, str]]:
    rows = []
    for w in data.widths:
        row = {
            "name": w.name,
            "units": _n(w.units),
            "i_med": _g(float(_median(w.interval))),
            "i_max": _g(float(w.interval.max())),
            "i_unstable": _n(w.unstable_interval),
        }
        if w.crown is not None:
            row |= {
                "c_med": _g(float(_median(w.crown))),
                "c_max": _g(float(w.crown.max())),
                "c_unstable": _n(w.unstable_crown),
            }
        rows.append(row)
    return rows


def _median(values: Any) -> float:
    import numpy as np

    return float(np.median(values))


def _firing(data: BundleReport) -> dict[str, Any] | None:
    f = data.firing
    if f is None:
        return None
    n = max(len(f.by_output), n_outputs(data.report) or 0)
    names = [f"Y_{k}" for k in range(n)]
    on_output: dict[int, list[str]] = {}
    for g in data.gates:
        if isinstance(g.get("k"), int):
            on_output.setdefault(g["k"], []).append(str(g.get("formula", "")))
    rows = [
        {
            "name": names[k],
            "count": _n(f.by_output[k]) if k < len(f.by_output) else "0",
            "rate": _pct(f.output_rate(k)),
            "gates": "; ".join(on_output.get(k, [])) or "-",
        }
        for k in range(n)
    ]
    return {
        "source": f.source,
        "inputs": _n(f.inputs),
        "fired": _n(f.gate_fired),
        "rate": _pct(f.rate),
        "out_of_domain": _n(f.out_of_domain),
        "rejected": _n(f.rejected),
        "clamped": _n(f.clamped),
        "flagged": _n(f.flagged),
        "rows": rows,
        "names": names,
    }


def page_context(data: BundleReport) -> dict[str, Any]:
    """Every value the template shows, formatted (figures excluded)."""
    report = data.report
    model = report.get("model") or {}
    backend = (report.get("backend") or {}).get("target") or {}
    check = report.get("check") or {}
    domain_rows, domain_note = _domain(report)
    cert = data.certificate or {}
    return {
        "version": __version__,
        "compiled_by": report.get("relugate_version", "?"),
        "model_name": Path(str(model.get("path", data.path.name))).name,
        "model_sha": str(model.get("sha256", "?"))[:16],
        "bundle": str(data.path),
        "target": backend.get("name"),
        "cards": _cards(data),
        "domain_rows": domain_rows,
        "domain_note": domain_note,
        "passes": [
            {
                "name": p["name"],
                "changed": "yes" if p["changed"] else "no",
                "ms": f"{1000 * float(p['seconds']):.2f}",
                "relus": _arrow(p, "relus"),
                "params": _arrow(p, "params"),
                "flops": _arrow(p, "flops"),
                "layers": _arrow(p, "layers"),
            }
            for p in data.passes
        ],
        "check_note": (
            f"Checked against the original in onnxruntime on {_n(check.get('samples'))} inputs"
            f"{' of the domain' if report.get('domain') else ''}: max relative error "
            f"{_g(check.get('max_relative_error'), 2)} "
            f"(tolerance {_g(check.get('tolerance'), 2)})."
            if check
            else ""
        ),
        "relu_source": data.relu_source,
        "relu_rows": [
            {
                "name": r.name,
                "before": _n(r.before),
                "after": _n(r.after),
                "removed": _n(r.before - r.after),
                "inactive_removed": _n(r.inactive_removed),
                "active": _n(r.active),
                "unstable": _n(r.unstable),
            }
            for r in data.relu_layers
        ],
        "width_rows": _widths(data),
        "has_crown": any(w.crown is not None for w in data.widths),
        "widths_note": data.widths_note,
        "verdicts": [
            {
                "source": v.get("source", "?"),
                "verdict": v.get("verdict", "?"),
                "css": _css(v.get("verdict")),
                "method": v.get("method") or "-",
                "seconds": _g(v.get("seconds")),
                "gated": "yes" if v.get("gated") else "no",
            }
            for v in data.verdicts
        ],
        "gates": [
            {
                "index": i + 1,
                "where": _where(g),
                "formula": g.get("formula", "?"),
                "delta": _g(g.get("delta")),
                "switch": "yes" if g.get("switch") else "no (always on)",
            }
            for i, g in enumerate(data.gates)
        ],
        "proofs": [
            {
                "where": _where(c),
                "status": c.get("status", "?"),
                "css": _css(c.get("status")),
                "millis": _g(c.get("millis")),
                "modes": ", ".join(map(str, c.get("modes", []))) or "-",
            }
            for c in data.proof_cases
        ],
        "proof_method": str((cert.get("proof") or {}).get("method", "")),
        "fidelity": [
            {
                "source": f.get("source", "?"),
                "samples": _n(f.get("samples")),
                "same_argmax": _pct(f.get("same_argmax")),
                "same_argmin": _pct(f.get("same_argmin")),
                "close": _pct(f.get("close")),
                "safe_samples": _n(f.get("original_safe_samples")),
                "safe_same_argmax": _pct(f.get("safe_same_argmax")),
                "safe_close": _pct(f.get("safe_close")),
                "unsafe_gated": _n(f.get("unsafe_gated")),
                "css": "ok" if f.get("unsafe_gated") == 0 else "bad",
            }
            for f in data.fidelity
        ],
        "firing": _firing(data),
    }


def render(data: BundleReport) -> str:
    """The report page as one HTML string."""
    try:
        import jinja2
    except ImportError:
        raise MissingReportExtra(
            "relugate report --html needs matplotlib and jinja2: pip install 'relugate[report]'"
        ) from None
    from markupsafe import Markup

    ctx = page_context(data)
    ctx["pass_plot"] = Markup(pass_steps_svg(data.passes)) if data.passes else None
    ctx["relu_plot"] = Markup(relu_layers_svg(data.relu_layers)) if data.relu_layers else None
    ctx["width_plot"] = Markup(bound_widths_svg(data.widths)) if data.widths else None
    firing, ctx["firing_plot"] = ctx["firing"], None
    if firing is not None and data.firing is not None and firing["names"]:
        ctx["firing_plot"] = Markup(firing_svg(data.firing, firing["names"]))
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return env.from_string(TEMPLATE).render(**ctx)
