"""Project config (``relugate.toml`` / ``[tool.relugate]``) and ``relugate build``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from cli_helpers import assert_no_traceback, invoke, says
from conftest import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st
from pipeline_helpers import MODEL, SPEC, read_report, violated_spec

from relugate.compiler.config import ENTRY_KEYS, NAME, OPTIONS, find_config, load_config
from relugate.compiler.errors import ConfigError

TWO_MODELS = f"""
out_dir = "bundles"

[defaults]
target = "none"
gate_timeout = 5

[[models]]
name = "collision"
model = "{MODEL}"
spec = "{SPEC}"

[[models]]
name = "strict"
model = "{MODEL}"
specs = ["violated.vnnlib"]
require = "proof"
out = "elsewhere/strict"
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    violated_spec(tmp_path / "violated.vnnlib")
    path = tmp_path / "relugate.toml"
    path.write_text(TWO_MODELS)
    return path


def test_load_config(project: Path) -> None:
    loaded = load_config(project)
    assert loaded.names() == ["collision", "strict"]
    first, second = loaded.entries
    assert first.model == MODEL and first.specs == (SPEC,)
    assert first.out == project.parent / "bundles" / "collision"
    assert first.options == {"target": "none", "gate_timeout": 5}
    assert second.specs == (project.parent / "violated.vnnlib",)  # relative to the config
    assert second.out == project.parent / "elsewhere" / "strict"
    assert second.options == {"target": "none", "gate_timeout": 5, "require": "proof"}
    assert loaded.report == project.parent / "bundles" / "build-report.json"
    assert [e.name for e in loaded.select(["strict"])] == ["strict"]


def test_pyproject_tool_table(tmp_path: Path) -> None:
    body = TWO_MODELS.replace("[defaults]", "[tool.relugate.defaults]")
    body = body.replace("[[models]]", "[[tool.relugate.models]]")
    body = body.replace('out_dir = "bundles"', '[tool.relugate]\nout_dir = "bundles"')
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n' + body)
    found = find_config(None, tmp_path)
    assert found == tmp_path / "pyproject.toml"
    assert load_config(found).names() == ["collision", "strict"]
    (tmp_path / "relugate.toml").write_text(TWO_MODELS)  # relugate.toml comes first
    assert find_config(None, tmp_path) == tmp_path / "relugate.toml"


def test_no_config_found(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    with pytest.raises(ConfigError, match=r"no relugate\.toml, nor a \[tool\.relugate\]"):
        find_config(None, tmp_path)
    with pytest.raises(ConfigError, match="no such config file"):
        find_config(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match=r"no \[tool\.relugate\] table"):
        load_config(tmp_path / "pyproject.toml")


MODELS = TWO_MODELS[TWO_MODELS.index("[[models]]") :]
BAD = [  # (text to replace, replacement, what the message must say)
    ("gate_timeout = 5", "gate_timout = 5", ["defaults.gate_timout", "mean 'gate_timeout'"]),
    ('require = "proof"', 'require = "maybe"', ["(strict).require", "proof, repair, none"]),
    ("gate_timeout = 5", "gate_timeout = -1", ["defaults.gate_timeout", "seconds >= 0"]),
    ("gate_timeout = 5", 'gate_timeout = "5"', ["defaults.gate_timeout", "'5'"]),
    ('name = "strict"', 'name = "collision"', ["same name 'collision'"]),
    ('out = "elsewhere/strict"', 'out = "bundles/collision"', ["same out"]),
    ('name = "strict"', 'name = "../up"', ["models[1].name", "'../up'"]),
    ('specs = ["violated.vnnlib"]', "specs = [1]", ["(strict).specs", "list of strings"]),
    ('spec = "', 'specs = ["x"]\nspec = "', ["spec and specs"]),
    ('spec = "', 'input_box = ["0,1"]\nspec = "', ["(collision).input_box", "not both"]),
    ('out_dir = "bundles"', 'outdir = "bundles"', ["outdir", "did you mean 'out_dir'"]),
    ('model = "', 'modle = "x"\nmodel = "', ["models[0] (collision).modle", "mean 'model'"]),
    ("[[models]]", "[models]", ["not valid TOML"]),
    (MODELS, "", ["no models"]),
    ("gate_timeout = 5", "gate_timeout = ]", ["not valid TOML", "line 6"]),
]


@pytest.mark.parametrize(("old", "new", "needles"), BAD)
def test_bad_config(project: Path, old: str, new: str, needles: list[str]) -> None:
    project.write_text(TWO_MODELS.replace(old, new, 1))
    with pytest.raises(ConfigError) as info:
        load_config(project)
    message = str(info.value)
    assert message.startswith(str(project)), message
    for needle in needles:
        assert needle in message, message
    result = invoke("build", "--config", project)  # the command says the same, exit 3
    assert result.exit_code == 3 and says(result.stderr, "error (bad config)", needles[0])
    assert_no_traceback(result.stderr)


def test_build_worst_exit_code_and_combined_report(project: Path) -> None:
    result = invoke("build", "--config", project)
    assert result.exit_code == 4, (result.stdout, result.stderr)
    report = read_report(project.parent / "bundles" / "build-report.json")
    assert report["format"] == "relugate-build-report/1" and report["exit_code"] == 4
    assert report["status"] == "failed" and report["config"] == str(project)
    models = {m["name"]: m for m in report["models"]}
    assert (models["collision"]["exit_code"], models["strict"]["exit_code"]) == (0, 4)
    assert models["collision"]["report"]["guarantee"]["met"]
    assert models["strict"]["report"]["error"]["kind"] == "not guaranteed"
    assert (project.parent / "bundles" / "collision" / "model.onnx").is_file()
    assert not (project.parent / "elsewhere" / "strict").exists()
    assert says(result.stdout, "relugate: collision: ok (exit 0)")
    assert says(result.stdout, "relugate: strict: failed (exit 4)")
    assert says(result.stdout, "build: 1/2 compiled, exit 4")
    assert says(result.stderr, "strict (not guaranteed)")


def test_build_only_force_and_report_path(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project.parent)  # found without --config
    assert invoke("build", "--only", "collision").exit_code == 0
    again = invoke("build", "--only", "collision")  # the bundle exists: exit 5
    assert again.exit_code == 5 and says(again.stderr, "already exists", "--force")
    custom = project.parent / "ci" / "report.json"
    result = invoke("build", "--only", "collision", "--force", "--report", custom)
    assert result.exit_code == 0
    report = read_report(custom)
    assert [m["name"] for m in report["models"]] == ["collision"] and report["status"] == "ok"
    unknown = invoke("build", "--only", "nope")
    assert unknown.exit_code == 3 and says(unknown.stderr, "no model named 'nope'", "collision")


def test_build_without_a_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke("build")
    assert result.exit_code == 3 and says(result.stderr, "error (bad config)", "--config FILE")


def test_readme_config_example(tmp_path: Path) -> None:
    """The README's relugate.toml loads as documented."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Project config") :]
    match = re.search(r"```toml\n(.*?)```", section, re.S)
    assert match, "no toml block in the README's Project config section"
    (tmp_path / "relugate.toml").write_text(match.group(1))
    loaded = load_config(tmp_path / "relugate.toml")
    first, second = loaded.entries
    assert first.options == {"target": "llvm", "require": "proof", "gate_timeout": 30}
    assert first.out == tmp_path / "build" / "relugate" / "collision"
    assert second.input_box == ("0,100", "-10,30", "0,40") and second.out == tmp_path / "build/wide"
    assert loaded.report == tmp_path / "build" / "relugate" / "build-report.json"


KEYS = [*OPTIONS, *ENTRY_KEYS, "bogus"]
VALUES = st.one_of(
    st.sampled_from(["none", "proof", "repair", "llvm", "reject", "auto", "m.onnx", "a/b"]),
    st.text(max_size=12),
    st.integers(-3, 3),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.text(max_size=6), max_size=3),
)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value != value:
            return "nan"
        if abs(value) == float("inf"):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    return json.dumps(value)


@settings(max_examples=150, deadline=None)
@given(
    defaults=st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=3),
    entries=st.lists(st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=3), max_size=3),
)
def test_any_config_loads_or_says_why(
    tmp_path_factory: pytest.TempPathFactory,
    defaults: dict[str, object],
    entries: list[dict[str, object]],
) -> None:
    """Whatever the keys and values, a config loads or raises ConfigError, nothing else."""
    lines = ["[defaults]", *(f"{k} = {_toml_value(v)}" for k, v in defaults.items())]
    for i, extra in enumerate(entries):
        entry = {"name": f"m{i}", "model": "m.onnx", **extra}  # a valid start, then anything
        lines += ["[[models]]", *(f"{k} = {_toml_value(v)}" for k, v in entry.items())]
    path = tmp_path_factory.mktemp("cfg") / "relugate.toml"
    path.write_text("\n".join(lines) + "\n")
    try:
        loaded = load_config(path)
    except ConfigError as exc:
        assert str(exc).startswith(str(path))
        return
    for entry in loaded.entries:  # what loads is what the checks allow
        assert set(entry.options) <= set(OPTIONS)
        assert NAME.match(entry.name)
