"""Project config: several models, each with its properties, compiled by ``relugate build``.

The config is ``relugate.toml``, or the ``[tool.relugate]`` table of
``pyproject.toml`` (same keys)::

    out_dir = "build/relugate"        # bundles go to OUT_DIR/NAME (default build/relugate)
    report = "build/relugate/build-report.json"   # the combined report (this default)

    [defaults]                        # options for every model; a model's own keys win
    target = "none"
    require = "repair"
    gate_timeout = 30

    [[models]]
    name = "collision"                # letters, digits, '.', '_', '-'; unique
    model = "examples/collision.onnx"
    specs = ["examples/collision.vnnlib"]   # or spec = "..."; or input_box = ["0,1"]
    out = "build/collision"           # optional: default OUT_DIR/NAME
    require = "proof"

Options are those of ``relugate compile`` with ``_`` for ``-``: ``require``,
``target``, ``policy``, ``gates``, ``gate_timeout``, ``stability``,
``maxpool_to_relu``, ``linear_skip``, ``batch``, ``tune_seconds``, ``tuning_db``, ``force``,
``verify_each``.  Paths are relative to the config file's folder.  Anything
wrong (TOML syntax, an unknown key, a value of the wrong type, a duplicate
name or output folder) is a ``ConfigError`` (exit 3) naming the file and key.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relugate.compiler.errors import ConfigError

CONFIG_FILE = "relugate.toml"
PYPROJECT = "pyproject.toml"
DEFAULT_OUT_DIR = "build/relugate"
REPORT_NAME = "build-report.json"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _str(v: Any) -> bool:
    return isinstance(v, str)


def _bool(v: Any) -> bool:
    return isinstance(v, bool)


def _seconds(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and v >= 0


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _choice(*values: str) -> Callable[[Any], bool]:
    def check(v: Any) -> bool:
        return v in values

    return check


# option -> (check, what a valid value is)
OPTIONS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "require": (_choice("proof", "repair", "none"), "one of proof, repair, none"),
    "target": (_choice("llvm", "aarch64", "cuda", "none"), "one of llvm, aarch64, cuda, none"),
    "policy": (_choice("reject", "clamp", "flag"), "one of reject, clamp, flag"),
    "gates": (_bool, "true or false"),
    "gate_timeout": (_seconds, "a number of seconds >= 0"),
    "stability": (
        _choice("auto", "crown", "split", "interval", "lp", "milp"),
        "one of auto, crown, split, interval, lp, milp",
    ),
    "maxpool_to_relu": (_bool, "true or false"),
    "linear_skip": (_bool, "true or false"),
    "batch": (_positive_int, "an integer >= 1"),
    "tune_seconds": (_seconds, "a number of seconds >= 0"),
    "tuning_db": (_str, "a path"),
    "force": (_bool, "true or false"),
    "verify_each": (_bool, "true or false"),
}
PATH_OPTIONS = ("tuning_db",)
ENTRY_KEYS = ("name", "model", "spec", "specs", "input_box", "out")
TOP_KEYS = ("out_dir", "report", "defaults", "models")


@dataclass(frozen=True)
class Entry:
    """One model to compile: where it is, its properties, its bundle folder, its options."""

    name: str
    model: Path
    specs: tuple[Path, ...]
    input_box: tuple[str, ...]
    out: Path
    options: dict[str, Any]


@dataclass(frozen=True)
class Project:
    path: Path
    entries: tuple[Entry, ...]
    report: Path

    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def select(self, only: Sequence[str]) -> list[Entry]:
        """The entries named in ``only`` (all when empty), in config order."""
        unknown = [n for n in only if n not in self.names()]
        if unknown:
            raise ConfigError(
                f"{self.path}: no model named {', '.join(map(repr, unknown))} "
                f"(--only); the models are {', '.join(self.names())}"
            )
        return [e for e in self.entries if not only or e.name in only]


def find_config(explicit: Path | None, cwd: Path | None = None) -> Path:
    """``explicit``, else ``relugate.toml``, else a ``pyproject.toml`` with ``[tool.relugate]``."""
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(f"{explicit}: no such config file")
        return explicit
    here = cwd or Path.cwd()
    if (here / CONFIG_FILE).is_file():
        return here / CONFIG_FILE
    pyproject = here / PYPROJECT
    if pyproject.is_file() and "relugate" in _read(pyproject).get("tool", {}):
        return pyproject
    raise ConfigError(
        f"no {CONFIG_FILE}, nor a [tool.relugate] table in {PYPROJECT}, in {here}; "
        "pass --config FILE"
    )


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc}") from exc


def _table(path: Path) -> tuple[dict[str, Any], str]:
    """The config table and how to name its keys in errors."""
    data = _read(path)
    if path.name != PYPROJECT:
        return data, ""
    tool = data.get("tool", {})
    if not isinstance(tool, dict) or "relugate" not in tool:
        raise ConfigError(f"{path}: no [tool.relugate] table")
    table = tool["relugate"]
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: tool.relugate must be a table")
    return table, "tool.relugate."


def _unknown(path: Path, where: str, key: str, known: Sequence[str]) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
    return ConfigError(f"{path}: {where}{key}: unknown key{hint}")


def _options(path: Path, where: str, table: dict[str, Any], base: Path) -> dict[str, Any]:
    """The compile options in ``table`` (keys outside ENTRY_KEYS), checked."""
    options: dict[str, Any] = {}
    for key, value in table.items():
        if key in ENTRY_KEYS:
            continue
        if key not in OPTIONS:
            raise _unknown(path, where, key, sorted((*OPTIONS, *ENTRY_KEYS)))
        check, what = OPTIONS[key]
        if not check(value):
            raise ConfigError(f"{path}: {where}{key} must be {what}, not {value!r}")
        options[key] = str(base / value) if key in PATH_OPTIONS else value
    return options


def _path_list(path: Path, where: str, value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ConfigError(f"{path}: {where} must be a string or a list of strings, not {value!r}")


def _entry(
    path: Path, prefix: str, index: int, raw: Any, defaults: dict[str, Any], out_dir: Path
) -> Entry:
    where = f"{prefix}models[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: {where} must be a table ([[models]])")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise ConfigError(
            f"{path}: {where}.name must be a name of letters, digits, '.', '_', '-', not {name!r}"
        )
    where = f"{where} ({name})."
    model = raw.get("model")
    if not isinstance(model, str):
        raise ConfigError(f"{path}: {where}model must be the path of an ONNX file")
    if "spec" in raw and "specs" in raw:
        raise ConfigError(f"{path}: {where}spec and specs: give one of them")
    base = path.absolute().parent
    specs = _path_list(path, f"{where}specs", raw.get("specs", raw.get("spec", [])))
    boxes = _path_list(path, f"{where}input_box", raw.get("input_box", []))
    if specs and boxes:
        raise ConfigError(f"{path}: {where}input_box: give specs or input_box, not both")
    out = raw.get("out", str(out_dir / name))
    if not isinstance(out, str):
        raise ConfigError(f"{path}: {where}out must be a folder path, not {out!r}")
    options = {**defaults, **_options(path, where, raw, base)}
    return Entry(
        name=name,
        model=base / model,
        specs=tuple(base / s for s in specs),
        input_box=tuple(boxes),
        out=base / out,
        options=options,
    )


def load_config(path: Path) -> Project:
    """Read and check the config at ``path`` (``relugate.toml`` or ``pyproject.toml``)."""
    table, prefix = _table(path)
    for key in table:
        if key not in TOP_KEYS:
            raise _unknown(path, prefix, key, TOP_KEYS)
    base = path.absolute().parent
    out_dir = table.get("out_dir", DEFAULT_OUT_DIR)
    if not isinstance(out_dir, str):
        raise ConfigError(f"{path}: {prefix}out_dir must be a folder path, not {out_dir!r}")
    report = table.get("report", f"{out_dir}/{REPORT_NAME}")
    if not isinstance(report, str):
        raise ConfigError(f"{path}: {prefix}report must be a file path, not {report!r}")
    defaults_raw = table.get("defaults", {})
    if not isinstance(defaults_raw, dict):
        raise ConfigError(f"{path}: {prefix}defaults must be a table ([defaults])")
    for key in defaults_raw:
        if key not in OPTIONS:
            raise _unknown(path, f"{prefix}defaults.", key, sorted(OPTIONS))
    defaults = _options(path, f"{prefix}defaults.", defaults_raw, base)
    models = table.get("models")
    if not isinstance(models, list) or not models:
        raise ConfigError(f"{path}: {prefix}models: no models; add a [[models]] table per model")
    entries = [
        _entry(path, prefix, i, raw, defaults, Path(out_dir)) for i, raw in enumerate(models)
    ]
    _unique(path, prefix, "name", [e.name for e in entries])
    _unique(path, prefix, "out", [str(e.out.resolve()) for e in entries])
    return Project(path, tuple(entries), base / report)


def _unique(path: Path, prefix: str, key: str, values: list[str]) -> None:
    seen = set()
    for v in values:
        if v in seen:
            raise ConfigError(f"{path}: {prefix}models: two models have the same {key} {v!r}")
        seen.add(v)
