"""``relugate report``: the numbers it gathers from a bundle, the HTML page (valid,
self-contained, escaped, the report's own figures), the text summary, the gate
firing rates (from a stats file and from running the bundle), and the errors."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_helpers import invoke, says
from conftest import mlp_model, save_model
from test_gates import TWO_ROWS
from test_verify import spec, tiny_net

from relugate.compiler.compile import CompileOptions, compile_model
from relugate.compiler.fidelity import run_any
from relugate.compiler.frontend import load_model
from relugate.compiler.gates_onnx import strip_gates
from relugate.compiler.importer import import_network
from relugate.compiler.network import TensorSpec
from relugate.compiler.report_data import gather
from relugate.compiler.report_html import render
from relugate.passes.analysis.steps import ReluStep, steps_of

pytest.importorskip("matplotlib")
pytest.importorskip("jinja2")

CHROMIUM = Path("/usr/bin/chromium")
VOID = {"meta", "br", "img", "input", "link", "hr", "col", "area", "base", "source", "wbr"}


# -- bundles ---------------------------------------------------------------------------


def gated_bundle(tmp: Path, target: str | None) -> Path:
    """tiny_net on [-1, 1]^2 with a violated property: one gate."""
    out = tmp / "bundle"
    options = CompileOptions(out_dir=out, gate_timeout=10, target=target)
    compile_model(tiny_net(tmp), options, specs=[spec(tmp, -1, 1, TWO_ROWS)])
    return out


@pytest.fixture(scope="module")
def gated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return gated_bundle(tmp_path_factory.mktemp("gated"), None)


@pytest.fixture(scope="module")
def gated_llvm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same, with a TVM library the runtime can run (--sample)."""
    return gated_bundle(tmp_path_factory.mktemp("gated-llvm"), "llvm")


@pytest.fixture(scope="module")
def ungated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLP on a small box where the property holds and stable_relu removes units."""
    tmp = tmp_path_factory.mktemp("ungated")
    model = save_model(mlp_model([3, 16, 16, 2], seed=3), tmp / "mlp.onnx")
    lines = [f"(declare-const X_{i} Real)" for i in range(3)]
    lines += ["(declare-const Y_0 Real)", "(declare-const Y_1 Real)"]
    lines += [f"(assert (>= X_{i} 0.0))\n(assert (<= X_{i} 0.5))" for i in range(3)]
    (tmp / "p.vnnlib").write_text("\n".join([*lines, "(assert (>= Y_0 1000))"]))
    out = tmp / "bundle"
    compile_model(model, CompileOptions(out_dir=out, gate_timeout=10), specs=[tmp / "p.vnnlib"])
    return out


def report_of(bundle: Path) -> dict:
    return json.loads((bundle / "report.json").read_text())


# -- HTML checks -----------------------------------------------------------------------


class Walker(HTMLParser):
    """Walks a page: every tag closed in order, ids, and anything fetched from outside."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.ids: dict[str, list[str]] = {}
        self.fetches: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._attrs(tag, attrs)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._attrs(tag, attrs)

    def _attrs(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for key, value in attrs:
            if key == "id" and value:
                self.ids.setdefault(value, []).append(tag)
            if key in ("src", "href", "xlink:href") and value and not value.startswith("#"):
                self.fetches.append(f"{tag} {key}={value}")
        if tag in ("script", "link", "iframe", "object", "embed"):
            self.fetches.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:]}")
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def walk(page: str) -> Walker:
    walker = Walker()
    walker.feed(page)
    walker.close()
    assert page.startswith("<!DOCTYPE html>")
    assert walker.errors == [], walker.errors[:5]
    assert walker.stack == [], f"unclosed: {walker.stack}"
    assert walker.fetches == [], walker.fetches  # self-contained: no network, no script
    dupes = {k: v for k, v in walker.ids.items() if len(v) > 1}
    assert not dupes, f"duplicate ids {list(dupes)[:5]}"
    assert not re.search(r"url\((?!#)", page) and "@import" not in page
    return walker


def text_of(walker: Walker) -> str:
    return " ".join(" ".join(walker.text).split())


def n(value: int) -> str:
    return f"{value:,}"


def pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def write_page(bundle: Path, out: Path, *args: str) -> str:
    result = invoke("report", bundle, "--html", "-o", out, *args)
    assert result.exit_code == 0, result.output
    assert says(result.stdout, f"wrote {out}")
    return out.read_text()


# -- pages -----------------------------------------------------------------------------


def test_gated_page_shows_the_bundle_numbers(gated: Path, tmp_path: Path) -> None:
    page = write_page(gated, tmp_path / "r.html")
    walker = walk(page)
    text = text_of(walker)
    report = report_of(gated)
    cert = json.loads((gated / "certificate.json").read_text())
    for key in ("relus", "params", "flops"):
        assert f"{n(report['before'][key])} → {n(report['after'][key])}" in text
    for step in report["passes"]:
        assert step["name"] in text
        assert f"{1000 * step['seconds']:.2f}" in text
    assert len(cert["gates"]) == 1
    assert cert["gates"][0]["formula"] in text
    assert cert["proof"]["cases"][0]["status"] in text
    fid = report["fidelity"][0]
    for key in ("same_argmax", "close", "safe_close"):
        assert pct(fid[key]) in text
    assert n(fid["original_safe_samples"]) in text
    assert report["verdict_original"][0]["verdict"] == "violated" and "violated" in text
    for plot in ("plot-passes", "plot-relus", "plot-widths"):
        assert walker.ids[plot] == ["figure"]
    assert "plot-firing" not in walker.ids and "No telemetry given" in text


def test_ungated_page_and_relu_counts(ungated: Path, tmp_path: Path) -> None:
    page = write_page(ungated, tmp_path / "r.html")
    text = text_of(walk(page))
    report = report_of(ungated)
    assert report["gates"] == [] and "No gate: every property holds" in text
    assert "holds" in text and "trivial" in text
    assert report["before"]["relus"] > report["after"]["relus"]
    data = gather(ungated, "interval")
    assert data.relu_source == "original model"
    assert sum(r.before for r in data.relu_layers) == report["before"]["relus"]
    assert sum(r.after for r in data.relu_layers) == report["after"]["relus"]
    details = report["passes"][-1]["details"]["layers"]
    for row in data.relu_layers:  # per layer, the units stable_relu removed
        removed = details[row.name]["inactive_removed"]
        assert row.inactive_removed == removed and row.before - row.after >= removed
        assert (row.active, row.unstable) == (
            details[row.name]["active"],
            details[row.name]["unstable"],
        )
        assert f"{row.name} {row.before} {row.after} {row.before - row.after}" in text


def test_before_counts_without_the_original(ungated: Path, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(ungated, copy)
    report = report_of(copy)
    report["model"]["sha256"] = "0" * 64  # the original "changed": not used
    (copy / "report.json").write_text(json.dumps(report))
    if (copy / "certificate.json").exists():
        cert = json.loads((copy / "certificate.json").read_text())
        cert["input_model"]["path"] = str(tmp_path / "gone.onnx")
        (copy / "certificate.json").write_text(json.dumps(cert))
    data = gather(copy, "none")
    assert data.relu_source.startswith("stable_relu's input")
    units = {k: v["units"] for k, v in report["passes"][-1]["details"]["layers"].items()}
    assert {r.name: r.before for r in data.relu_layers} == units
    assert data.widths == [] and "not computed" in data.widths_note


def test_bound_widths_enclose_sampled_preactivations(gated: Path, ungated: Path) -> None:
    for bundle in (gated, ungated):
        data = gather(bundle, "crown")
        domain = report_of(bundle)["domain"]
        core = strip_gates(onnx.load(str(bundle / "model.onnx")))
        with tempfile.TemporaryDirectory() as tmp:
            onnx.save(core, f"{tmp}/core.onnx")
            net = import_network(load_model(f"{tmp}/core.onnx"))
        relus = [k for k, s in enumerate(steps_of(net)) if isinstance(s, ReluStep)]
        assert [w.name for w in data.widths] == [steps_of(net)[k].layer.name for k in relus]
        rng = np.random.default_rng(0)
        lo, hi = np.array(domain["lo"]), np.array(domain["hi"])
        x = rng.uniform(lo, hi, size=(20_000, lo.size))
        acts = net.activations(x)  # input of every layer
        layer_index = {lay.name: i for i, lay in enumerate(net.layers)}
        for w in data.widths:
            pre = acts[layer_index[w.name]].reshape(len(x), -1)
            spread = pre.max(axis=0) - pre.min(axis=0)
            assert w.crown is not None
            assert (spread <= w.crown + 1e-9).all()
            assert (w.crown <= w.interval + 1e-9).all()
            assert w.unstable_crown is not None and w.unstable_crown <= w.unstable_interval


def test_firing_from_stats_file(gated: Path, tmp_path: Path) -> None:
    stats = {
        "calls": 3,
        "inputs": 1000,
        "out_of_domain": 4,
        "rejected": 0,
        "clamped": 4,
        "flagged": 0,
        "gate_fired": 37,
        "gate_fired_by_output": [37, 0],
        "bad_inputs": 0,
    }
    path = tmp_path / "stats.json"
    path.write_text(json.dumps(stats))
    text = text_of(walk(write_page(gated, tmp_path / "r.html", "--stats", str(path))))
    # the HTTP endpoint's GET /stats wraps the same snapshot
    served = tmp_path / "served.json"
    served.write_text(json.dumps({"model": stats, "server": {"requests": 3}}))
    again = text_of(walk(write_page(gated, tmp_path / "s.html", "--stats", str(served))))
    assert again.replace(str(served), str(path)) == text
    assert "a gate changed the output of 37 (3.70%)" in text
    assert "out of domain 4 (rejected 0, clamped 4, flagged 0)" in text
    formula = report_of(gated)["gates"][0]["formula"]
    assert f"Y_0 37 3.70% {formula}" in text and "Y_1 0 0.00% -" in text


def test_firing_measured_on_samples_matches_onnxruntime(gated_llvm: Path, tmp_path: Path) -> None:
    gated = gated_llvm
    page = write_page(gated, tmp_path / "r.html", "--sample", "3000", "--seed", "5")
    walker = walk(page)
    assert walker.ids["plot-firing"] == ["figure"]
    # the same samples, run through the gated and the ungated ONNX model in onnxruntime
    domain = report_of(gated)["domain"]
    lo, hi = np.array(domain["lo"]), np.array(domain["hi"])
    x = np.random.default_rng(5).uniform(lo, hi, size=(3000, lo.size)).astype(np.float32)
    model = onnx.load(str(gated / "model.onnx"))
    spec_in = TensorSpec("x", (3000, 2), True, "N")
    diff = run_any(model, spec_in, x) != run_any(strip_gates(model), spec_in, x)
    fired = int(diff.any(axis=1).sum())
    assert 0 < fired < 3000
    text = text_of(walker)
    assert "3,000 inputs (3,000 uniform samples of the domain (seed 5))" in text
    shown = int(text.split("a gate changed the output of ")[1].split(" ")[0].replace(",", ""))
    assert abs(shown - fired) <= 3  # TVM and onnxruntime may round a boundary row apart


def test_text_summary(gated: Path) -> None:
    result = invoke("report", gated, "--bounds", "interval")
    assert result.exit_code == 0, result.output
    report = report_of(gated)
    assert says(result.stdout, "passes", "ReLUs per layer", "bound widths", "gates", "fidelity")
    for step in report["passes"]:
        assert step["name"] in result.stdout
    assert says(result.stdout, report["gates"][0]["formula"])
    assert "CROWN" not in result.stdout  # --bounds interval


def test_page_escapes_names_from_files(gated: Path, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(gated, copy)
    report = report_of(copy)
    evil = "<script>alert(1)</script>"
    report["fidelity"][0]["source"] = evil
    report["verdict_original"][0]["source"] = evil
    (copy / "report.json").write_text(json.dumps(report))
    page = render(gather(copy, "interval"))
    walk(page)
    assert evil not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_page_is_the_same_twice(gated: Path) -> None:
    assert render(gather(gated, "interval")) == render(gather(gated, "interval"))


# -- errors ----------------------------------------------------------------------------


def broken(tmp_path: Path, gated: Path, what: str) -> Path:
    bundle = tmp_path / "bundle"
    if what == "missing":
        return bundle
    shutil.copytree(gated, bundle)
    report = bundle / "report.json"
    if what == "no-report":
        report.unlink()
    elif what == "not-json":
        report.write_text("{ not json")
    elif what == "no-passes":
        data = json.loads(report.read_text())
        del data["passes"]
        report.write_text(json.dumps(data))
    elif what == "bad-domain":
        data = json.loads(report.read_text())
        data["domain"] = {"lo": [0.0], "hi": [1.0]}
        report.write_text(json.dumps(data))
    elif what == "bad-model":
        (bundle / "model.onnx").write_bytes(b"\x00garbage")
    return bundle


@pytest.mark.parametrize(
    ("what", "needle"),
    [
        ("missing", "no such folder"),
        ("no-report", "report.json missing"),
        ("not-json", "not valid JSON"),
        ("no-passes", "'passes' must be a list"),
        ("bad-domain", "the domain has 1 inputs; the bundle's network has 2"),
        ("bad-model", "not a readable ONNX file"),
    ],
)
def test_bad_bundle_is_a_bundle_error(gated: Path, tmp_path: Path, what: str, needle: str) -> None:
    bundle = broken(tmp_path, gated, what)
    out = tmp_path / "r.html"
    result = invoke("report", bundle, "--html", "-o", out)
    assert result.exit_code == 5, result.output
    assert says(result.stderr, "bundle error", needle), result.stderr
    assert "Traceback" not in result.output
    assert not out.exists()


@pytest.mark.parametrize(
    ("stats", "extra", "needle"),
    [
        ("{ nope", [], "not valid JSON"),
        ('{"inputs": 10}', [], "'gate_fired' must be a non-negative integer"),
        ('{"inputs": 10, "gate_fired": 11}', [], "more gate firings than inputs"),
        ('{"inputs": 10, "gate_fired": 1, "gate_fired_by_output": [1, 0, 0]}', [], "3 entries"),
        ('{"inputs": 10, "gate_fired": 1}', ["--sample", "5"], "not both"),
    ],
)
def test_bad_stats_is_bad_input(
    gated: Path, tmp_path: Path, stats: str, extra: list[str], needle: str
) -> None:
    path = tmp_path / "stats.json"
    path.write_text(stats)
    out = tmp_path / "r.html"
    result = invoke("report", gated, "--html", "-o", out, "--stats", path, *extra)
    assert result.exit_code == 3, result.output
    assert says(result.stderr, needle), result.stderr
    assert not out.exists()


def test_without_matplotlib(gated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The text summary needs neither matplotlib nor jinja2; --html says what to install."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    monkeypatch.setitem(sys.modules, "jinja2", None)
    assert invoke("report", gated, "--bounds", "none").exit_code == 0
    out = tmp_path / "r.html"
    result = invoke("report", gated, "--html", "-o", out, "--bounds", "none")
    assert result.exit_code == 3, result.output
    assert says(result.stderr, "missing dependency", "pip install 'relugate[report]'")
    assert not out.exists()


def test_unwritable_output_keeps_nothing(gated: Path, tmp_path: Path) -> None:
    out = tmp_path / "no-such-folder" / "r.html"
    result = invoke("report", gated, "--html", "-o", out, "--bounds", "none")
    assert result.exit_code == 5 and says(result.stderr, "cannot write")
    assert list(tmp_path.iterdir()) == []


def test_sampling_a_bundle_without_library(ungated: Path, tmp_path: Path) -> None:
    result = invoke("report", ungated, "--sample", "10")
    assert result.exit_code == 5, result.output
    assert says(result.stderr, "no library to run for --sample")


# -- headless Chromium -----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium")
def test_renders_in_headless_chromium(gated_llvm: Path, tmp_path: Path) -> None:
    page = tmp_path / "r.html"
    write_page(gated_llvm, page, "--sample", "500")
    profile = tmp_path / "profile"
    args = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        "--dump-dom",
        page.as_uri(),
    ]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line]
    assert console == [], console
    dom = Walker()
    dom.feed(done.stdout)
    for plot in ("plot-passes", "plot-relus", "plot-widths", "plot-firing"):
        assert dom.ids.get(plot) == ["figure"], plot
    # each figure holds an inline SVG with drawn paths and text
    for plot in ("plot-relus", "plot-widths", "plot-firing"):
        part = done.stdout.split(f'id="{plot}"')[1].split("</figure>")[0]
        assert "<svg" in part and "<path" in part and "<text" in part, plot
    assert "relugate report: tiny.onnx" in done.stdout
