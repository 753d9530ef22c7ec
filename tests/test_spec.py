"""Tests for the VNN-LIB reader and the --input-box form (relugate.compiler.spec)."""

from __future__ import annotations

import gzip
import json
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relugate.compiler.errors import BadSpec
from relugate.compiler.spec import (
    MAX_DNF_TERMS,
    Case,
    Polytope,
    Property,
    box_property,
    parse_input_box,
    parse_vnnlib,
    read_vnnlib,
)

BENCH = Path(
    os.environ.get("RELUGATE_BENCHMARKS")
    or Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks"
)
SKIP_REASON = f"benchmark folder {BENCH} is absent (set RELUGATE_BENCHMARKS to point at it)"

# Two declarations and a box on lines 1-4; the text under test starts on line 5.
HEAD = """(declare-const X_0 Real)
(declare-const Y_0 Real)
(assert (>= X_0 0))
(assert (<= X_0 1))
"""


def decls(n_in: int, n_out: int) -> str:
    xs = [f"(declare-const X_{i} Real)" for i in range(n_in)]
    ys = [f"(declare-const Y_{j} Real)" for j in range(n_out)]
    return "\n".join(xs + ys) + "\n"


def bench_spec(relative: str) -> Path:
    path = BENCH / relative
    if not path.is_file():
        pytest.skip(f"{path} is absent: {SKIP_REASON}")
    return path


def bench_params() -> list[Any]:
    if not BENCH.is_dir():
        return [pytest.param(None, id="no-benchmarks", marks=pytest.mark.skip(reason=SKIP_REASON))]
    paths = sorted(BENCH.glob("**/*.vnnlib"))
    return [pytest.param(p, id=str(p.relative_to(BENCH))) for p in paths]


def sorted_rows(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    rows = np.column_stack([A, b])
    return rows[np.lexsort(rows.T[::-1])]


# --- real benchmark specs -------------------------------------------------------


@pytest.mark.benchmarks
@pytest.mark.parametrize("path", bench_params())
def test_every_benchmark_spec_parses(path: Path) -> None:
    prop = read_vnnlib(path)
    assert prop.source == str(path)
    assert (prop.n_inputs, prop.n_outputs) in {(1, 1), (5, 5), (784, 10)}
    assert prop.cases and all(case.unsafe for case in prop.cases)
    assert prop.domain().contains(prop.domain().center).all()
    json.dumps(prop.to_json())


@pytest.mark.benchmarks
@pytest.mark.parametrize("relative", ["acasxu/prop_2.vnnlib", "vnncomp2021_test/test_prop.vnnlib"])
def test_acasxu_style_max_min_property(relative: str) -> None:
    prop = read_vnnlib(bench_spec(relative))
    assert (prop.n_inputs, prop.n_outputs, len(prop.cases)) == (5, 5, 1)
    (polytope,) = prop.cases[0].unsafe
    assert polytope.A.shape == (4, 5)
    assert np.array_equal(polytope.b, np.zeros(4))
    assert np.all(np.abs(polytope.A).sum(axis=1) == 2)


@pytest.mark.benchmarks
def test_acasxu_prop_2_exact() -> None:
    prop = read_vnnlib(bench_spec("acasxu/prop_2.vnnlib"))
    case = prop.cases[0]
    assert np.array_equal(case.box.lo, [0.6, -0.5, -0.5, 0.45, -0.5])
    assert np.array_equal(case.box.hi, [0.679857769, 0.5, 0.5, 0.5, -0.45])
    expected = np.array([[-1, 1, 0, 0, 0], [-1, 0, 1, 0, 0], [-1, 0, 0, 1, 0], [-1, 0, 0, 0, 1]])
    assert np.array_equal(case.unsafe[0].A, expected)
    # Unsafe iff Y_0 (clear of conflict) is maximal.
    assert case.is_unsafe(np.array([[5.0, 1, 2, 3, 4], [1.0, 5, 2, 3, 4]])).tolist() == [
        True,
        False,
    ]


@pytest.mark.benchmarks
def test_acasxu_prop_1_single_row() -> None:
    prop = read_vnnlib(bench_spec("acasxu/prop_1.vnnlib"))
    (polytope,) = prop.cases[0].unsafe
    assert np.array_equal(polytope.A, [[-1.0, 0, 0, 0, 0]])
    assert np.array_equal(polytope.b, [-3.991125645861615])


@pytest.mark.benchmarks
@pytest.mark.parametrize(
    "relative",
    [f"mnistfc/prop_{i}_{eps}.vnnlib" for i in (0, 7) for eps in ("0.03", "0.05")]
    + [f"verivital/specs/prop_{i}_0.004.vnnlib" for i in range(10)],
)
def test_mnist_style_robustness(relative: str) -> None:
    path = bench_spec(relative)
    match = re.search(r"label: (\d+)", path.read_text())
    assert match, f"{path} does not state its label"
    label = int(match[1])
    prop = read_vnnlib(path)
    assert (prop.n_inputs, prop.n_outputs, len(prop.cases)) == (784, 10, 1)
    case = prop.cases[0]
    assert len(case.unsafe) == 9 and all(p.A.shape == (1, 10) for p in case.unsafe)
    eps = float(relative.rsplit("_", 1)[1].removesuffix(".vnnlib"))
    assert np.all(case.box.width <= 2 * eps + 1e-6)
    assert np.all(case.box.lo >= 0) and np.all(case.box.hi <= 1)
    others = sorted(int(np.flatnonzero(p.A[0] == -1)[0]) for p in case.unsafe)
    assert others == [j for j in range(10) if j != label]
    assert all(p.A[0, label] == 1 for p in case.unsafe)
    safe, unsafe = np.zeros((2, 10))
    safe[label] = 1.0
    unsafe[(label + 3) % 10] = 1.0
    assert case.is_unsafe(np.stack([safe, unsafe])).tolist() == [False, True]


@pytest.mark.benchmarks
def test_test_small_mixes_input_and_output_atoms() -> None:
    prop = read_vnnlib(bench_spec("vnncomp2021_test/test_small.vnnlib"))
    assert (prop.n_inputs, prop.n_outputs, len(prop.cases)) == (1, 1, 1)
    case = prop.cases[0]
    assert np.array_equal(case.box.lo, [-1.0]) and np.array_equal(case.box.hi, [1.0])
    (polytope,) = case.unsafe
    assert np.array_equal(polytope.A, [[-1.0]]) and np.array_equal(polytope.b, [-100.0])
    assert case.is_unsafe(np.array([[150.0], [100.0], [50.0]])).tolist() == [True, True, False]


@pytest.mark.benchmarks
def test_mnist_spec_parses_to_one_box_and_nine_polytopes() -> None:
    prop = parse_vnnlib(bench_spec("mnistfc/prop_0_0.03.vnnlib").read_text())
    assert len(prop.cases) == 1 and prop.cases[0].box.dim == 784
    assert len(prop.cases[0].unsafe) == 9


# --- semantics -------------------------------------------------------------------


def test_box_and_polytope_semantics() -> None:
    prop = parse_vnnlib(
        decls(2, 2)
        + """
        ; a comment (with parens
        (assert (<= X_0 1)) (assert (>= X_0 -1))   ; two on a line
        (assert (< X_1 .5))
        (assert (> X_1 -5e-1))
        (assert (>= Y_0 (+ Y_1 2)))
        """
    )
    assert (prop.n_inputs, prop.n_outputs, prop.source) == (2, 2, "<string>")
    (case,) = prop.cases
    assert np.array_equal(case.box.lo, [-1, -0.5]) and np.array_equal(case.box.hi, [1, 0.5])
    (polytope,) = case.unsafe
    assert np.array_equal(polytope.A, [[-1.0, 1.0]]) and np.array_equal(polytope.b, [-2.0])
    y = np.array([[3.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    assert case.is_unsafe(y).tolist() == [True, False, True]
    assert case.is_unsafe(np.array([1.0, 0.0])).tolist() == [False]
    assert case.is_unsafe(np.array([1.9, 0.0]), tol=0.2).tolist() == [True]
    assert polytope.contains(y).tolist() == [True, False, True]


def test_linear_terms_are_normalised() -> None:
    prop = parse_vnnlib(
        decls(1, 3)
        + """
        (assert (<= 0 X_0 1))
        (assert (<= (+ Y_0 (* 2 Y_1) (- Y_2)) 1e-3))
        (assert (>= (- Y_0 Y_1 Y_2 1) (- 0.5)))
        (assert (<= (* Y_2 -3 0.5) (- 2 (* 4 Y_0))))
        (assert (<= (+ Y_1 Y_1 (* 0 Y_2)) -1.5E+2))
        (assert (= Y_0 +7))
        """
    )
    (polytope,) = prop.cases[0].unsafe
    expected_A = np.array([[1, 2, -1], [-1, 1, 1], [4, 0, -1.5], [0, 2, 0], [1, 0, 0], [-1, 0, 0]])
    assert np.array_equal(polytope.A, expected_A)
    assert np.array_equal(polytope.b, [1e-3, -0.5, 2, -150, 7, -7])
    assert np.array_equal(prop.cases[0].box.lo, [0]) and np.array_equal(prop.cases[0].box.hi, [1])


def test_scaled_and_reversed_input_bounds() -> None:
    prop = parse_vnnlib(
        decls(3, 1)
        + """
        (assert (<= (* 2 X_0) 1))
        (assert (>= 1 (* -4 X_0)))
        (assert (>= 3 X_1))
        (assert (<= (- X_1) 3))
        (assert (= X_2 -0))
        (assert (<= Y_0 0))
        """
    )
    box = prop.cases[0].box
    assert box.lo.tolist() == [-0.25, -3.0, 0.0] and box.hi.tolist() == [0.5, 3.0, 0.0]


def test_dnf_groups_terms_by_input_box() -> None:
    prop = parse_vnnlib(
        decls(1, 2)
        + """
        (assert (or
            (and (>= X_0 0) (<= X_0 1) (>= Y_0 1))
            (and (>= X_0 0) (<= X_0 1) (>= Y_1 1) (<= Y_1 2))
            (and (>= X_0 1) (<= X_0 2))
        ))
        """
    )
    assert len(prop.cases) == 2
    first, second = prop.cases
    assert first.box.hi.tolist() == [1.0] and [p.A.shape[0] for p in first.unsafe] == [1, 2]
    # A term without output atoms: every output is unsafe on that box.
    assert second.box.lo.tolist() == [1.0] and second.unsafe[0].A.shape == (0, 2)
    assert second.is_unsafe(np.array([[-1e9, 1e9]])).tolist() == [True]
    assert prop.domain().lo.tolist() == [0.0] and prop.domain().hi.tolist() == [2.0]


def test_and_distributes_over_or() -> None:
    prop = parse_vnnlib(
        decls(1, 2)
        + """
        (assert (and (>= X_0 0) (<= X_0 1)))
        (assert (or (<= Y_0 1) (<= Y_0 2)))
        (assert (and (or (>= Y_1 1) (>= Y_1 2)) (<= Y_0 5)))
        """
    )
    (case,) = prop.cases
    assert len(case.unsafe) == 4
    assert {tuple(p.b) for p in case.unsafe} == {(b0, 5, -b1) for b0 in (1, 2) for b1 in (1, 2)}


def test_inputs_bounded_in_each_branch() -> None:
    prop = parse_vnnlib(
        decls(2, 1)
        + """
        (assert (>= X_0 0))
        (assert (<= X_0 1))
        (assert (or (and (>= X_1 0) (<= X_1 1)) (and (>= X_1 5) (<= X_1 6) (>= Y_0 0))))
        """
    )
    assert [c.box.hi.tolist() for c in prop.cases] == [[1.0, 1.0], [1.0, 6.0]]


def test_ignored_commands_and_gzip(tmp_path: Path) -> None:
    text = "(set-logic QF_LRA)\n" + HEAD + "(assert (<= Y_0 0))\n(check-sat)\n(get-model)\n"
    path = tmp_path / "p.vnnlib.gz"
    path.write_bytes(gzip.compress(text.encode()))
    prop = read_vnnlib(path)
    assert prop.source == str(path) and prop.cases[0].unsafe[0].b.tolist() == [0.0]


def test_to_json_shape() -> None:
    prop = parse_vnnlib(HEAD + "(assert (<= Y_0 0))")
    assert prop.to_json() == {
        "source": "<string>",
        "n_inputs": 1,
        "n_outputs": 1,
        "cases": [{"box": {"lo": [0.0], "hi": [1.0]}, "unsafe": [{"A": [[1.0]], "b": [0.0]}]}],
    }


def test_values_are_read_only() -> None:
    prop = parse_vnnlib(HEAD + "(assert (<= Y_0 0))")
    with pytest.raises(ValueError):
        prop.cases[0].unsafe[0].A[0, 0] = 5.0


# --- malformed specs ---------------------------------------------------------------

BAD_SPECS = {
    "unclosed paren": (HEAD + "(assert (<= Y_0 1)\n", 5, "never closed"),
    "extra close paren": (HEAD + "(assert (<= Y_0 1)))\n", 5, "unexpected ')'"),
    "undeclared variable": (HEAD + "(assert (<= Y_3 1))", 5, "'Y_3' is not a number or a"),
    "use before declaration": (
        "(declare-const X_0 Real)\n(assert (>= X_0 0))\n(assert (<= X_0 1))\n"
        "(assert (<= Y_0 1))\n(declare-const Y_0 Real)\n",
        4,
        "'Y_0' is not a number or a declared variable",
    ),
    "mixed X and Y": (HEAD + "(assert (<= X_0 Y_0))", 5, "mixes input (X) and output (Y)"),
    "non-box input": (
        decls(2, 1) + "\n\n(assert (<= (+ X_0 X_1) 1))",
        6,
        "non-box input constraints are unsupported",
    ),
    "missing upper bound": (
        "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (>= X_0 0))",
        1,
        "X_0 has no upper bound",
    ),
    "missing lower bound in a branch": (
        decls(1, 1) + "(assert (<= X_0 1))\n(assert (or (>= X_0 0) (>= Y_0 1)))",
        1,
        "X_0 has no lower bound in DNF disjunct 2 of 2",
    ),
    "empty box": (HEAD + "\n(assert (>= X_0 2))", 6, "empty input box"),
    "unknown formula operator": (HEAD + "(assert (not (<= Y_0 1)))", 5, "unknown operator 'not'"),
    "unknown term operator": (HEAD + "(assert (<= (/ Y_0 2) 1))", 5, "unknown operator '/'"),
    "unknown command": (HEAD + "(define-fun f () Real 1)", 5, "unknown command"),
    "non-numeric literal": (
        HEAD + "(assert (<= Y_0 abc))",
        5,
        "'abc' is not a number or a declared",
    ),
    "malformed number": (HEAD + "(assert (<= Y_0 1.2.3))", 5, "'1.2.3' is not a valid number"),
    "nan literal": (HEAD + "(assert (<= Y_0 nan))", 5, "'nan'"),
    "hex literal": (HEAD + "(assert (<= Y_0 0x10))", 5, "'0x10' is not a valid number"),
    "huge literal": (HEAD + "(assert (<= Y_0 1e999))", 5, "out of range"),
    "gap in numbering": (
        "(declare-const X_0 Real)\n(declare-const X_2 Real)\n(declare-const Y_0 Real)\n",
        2,
        "X_1 is not declared but X_2 is",
    ),
    "output gap": (HEAD + "(declare-const Y_2 Real)", 5, "Y_1 is not declared"),
    "duplicate declaration": (HEAD + "(declare-const X_0 Real)", 5, "declared twice"),
    "bad sort": (HEAD + "(declare-const X_1 Int)", 5, "sort Real"),
    "bad name": (HEAD + "(declare-const Z_0 Real)", 5, "unsupported variable name 'Z_0'"),
    "leading zero": (HEAD + "(declare-const X_01 Real)", 5, "unsupported variable name"),
    "nonlinear": (decls(1, 2) + "(assert (<= (* Y_0 Y_1) 1))", 4, "nonlinear"),
    "no variables": (HEAD + "(assert (<= 1 2))", 5, "no variables"),
    "empty or": (HEAD + "(assert (or))", 5, "empty (or)"),
    "assert arity": (HEAD + "(assert (<= Y_0 1) (<= Y_0 2))", 5, "exactly one formula"),
    "comparison arity": (HEAD + "(assert (<= Y_0))", 5, "at least two terms"),
    "empty term": (HEAD + "(assert (<= () 1))", 5, "empty term"),
    "stray atom": (HEAD + "\nhello", 6, "expected a command"),
    "formula is a term": (HEAD + "(assert Y_0)", 5, "expected a formula"),
    "no outputs": ("(declare-const X_0 Real)\n(assert (>= X_0 0))", 1, "no output variables"),
    "too deep": (HEAD + "(assert " + "(and " * 300 + ")" * 301, 5, "nesting deeper"),
}


@pytest.mark.parametrize("text, line, fragment", BAD_SPECS.values(), ids=BAD_SPECS.keys())
def test_malformed_spec(text: str, line: int, fragment: str) -> None:
    with pytest.raises(BadSpec) as info:
        parse_vnnlib(text, "bad.vnnlib")
    message = str(info.value)
    assert message.startswith(f"bad.vnnlib:{line}: "), message
    assert fragment in message, message
    if "no output" not in fragment:  # otherwise the message quotes the offending text
        snippet = message.rsplit(": ", 1)[1].removesuffix(" ...")
        assert snippet in " ".join(text.splitlines()[line - 1].split()), message


def test_dnf_cap() -> None:
    body = "".join(
        f"(assert (or {' '.join(f'(<= Y_0 {k})' for k in range(8))}))\n" for _ in range(6)
    )
    with pytest.raises(BadSpec, match=rf"bad.vnnlib:10: .*{MAX_DNF_TERMS:,} DNF"):
        parse_vnnlib(HEAD + body, "bad.vnnlib")


def test_read_errors(tmp_path: Path) -> None:
    with pytest.raises(BadSpec, match="not found"):
        read_vnnlib(tmp_path / "missing.vnnlib")
    with pytest.raises(BadSpec, match="cannot read"):
        read_vnnlib(tmp_path)
    path = tmp_path / "latin1.vnnlib"
    path.write_bytes(HEAD.encode() + b"; caf\xe9\n")
    with pytest.raises(BadSpec, match=r"latin1.vnnlib:5: .*not UTF-8"):
        read_vnnlib(path)
    bad_gz = tmp_path / "bad.vnnlib.gz"
    bad_gz.write_bytes(b"not gzip")
    with pytest.raises(BadSpec, match="cannot read"):
        read_vnnlib(bad_gz)


# --- --input-box and hand-made properties -------------------------------------------


def test_parse_input_box_per_input_and_broadcast() -> None:
    box = parse_input_box(["0,1", " -2.5 , 1e-3 "])
    assert box.lo.tolist() == [0.0, -2.5] and box.hi.tolist() == [1.0, 1e-3]
    box = parse_input_box(["-1,1"], n_inputs=3)
    assert box.lo.tolist() == [-1.0] * 3 and box.hi.tolist() == [1.0] * 3
    assert parse_input_box(["0,1", "2,3"], n_inputs=2).dim == 2
    assert parse_input_box("0,1").dim == 1  # a bare string is one item


@pytest.mark.parametrize("item", ["a,b", "1", "2,1", "nan,1", "0,inf", "1,2,3", "", "1e999,1"])
def test_parse_input_box_rejects(item: str) -> None:
    with pytest.raises(BadSpec, match=re.escape(repr(item))):
        parse_input_box(["0,1", item])


def test_parse_input_box_count_mismatch() -> None:
    with pytest.raises(BadSpec, match="gives 2 intervals but the model has 3 inputs"):
        parse_input_box(["0,1", "0,1"], n_inputs=3)
    with pytest.raises(BadSpec, match="at least one"):
        parse_input_box([])


def test_box_property() -> None:
    prop = box_property([0, 0], [1, 2])
    assert (prop.n_inputs, prop.n_outputs, prop.source) == (2, 0, "--input-box")
    assert prop.cases[0].unsafe == () and not prop.cases[0].is_unsafe(np.zeros((4, 3))).any()
    unsafe = Polytope(np.array([[1.0, -1.0]]), np.array([0.0]))
    prop = box_property([0], [1], [unsafe])
    assert prop.n_outputs == 2 and prop.cases[0].is_unsafe(np.array([0.0, 1.0])).tolist() == [True]
    assert prop.domain() == prop.cases[0].box
    with pytest.raises(BadSpec):
        box_property([1], [0])


def test_property_checks_dimensions() -> None:
    case = box_property([0], [1]).cases[0]
    with pytest.raises(BadSpec):
        Property((case,), 2, 0, "x")
    with pytest.raises(BadSpec):
        Property((), 1, 0, "x")
    with pytest.raises(BadSpec):
        Polytope(np.zeros((2, 3)), np.zeros(3))
    with pytest.raises(BadSpec):
        Case(
            case.box,
            (Polytope(np.zeros((1, 2)), np.zeros(1)), Polytope(np.zeros((1, 3)), np.zeros(1))),
        )


# --- round trip -------------------------------------------------------------------------

finite = st.floats(-1e6, 1e6, allow_nan=False, allow_subnormal=False)


@st.composite
def boxes(draw: st.DrawFn, n: int) -> tuple[list[float], list[float]]:
    pairs = [sorted(draw(st.tuples(finite, finite))) for _ in range(n)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


@st.composite
def rows(draw: st.DrawFn, n_out: int) -> tuple[list[float], float]:
    coeffs = draw(st.lists(finite, min_size=n_out, max_size=n_out).filter(any))
    return coeffs, draw(finite)


def box_atoms(lo: list[float], hi: list[float], rnd: random.Random) -> list[str]:
    atoms = []
    for i, (low, high) in enumerate(zip(lo, hi, strict=True)):
        x = f"X_{i}"
        atoms.append(
            rnd.choice([f"(>= {x} {low!r})", f"(<= {low!r} {x})", f"(<= (- {x}) (- {low!r}))"])
        )
        atoms.append(
            rnd.choice([f"(<= {x} {high!r})", f"(>= {high!r} {x})", f"(<= (* 2 {x}) {2 * high!r})"])
        )
    return atoms


def row_atom(coeffs: list[float], b: float, rnd: random.Random) -> str:
    terms = [f"(* {c!r} Y_{j})" if c != 1.0 else f"Y_{j}" for j, c in enumerate(coeffs) if c]
    lin = terms[0] if len(terms) == 1 else f"(+ {' '.join(terms)})"
    return rnd.choice([f"(<= {lin} {b!r})", f"(>= {b!r} {lin})", f"(>= (- {lin}) (- {b!r}))"])


@settings(max_examples=150, deadline=None)
@given(data=st.data(), n_in=st.integers(1, 4), n_out=st.integers(1, 4), seed=st.integers(0, 2**32))
def test_round_trip_single_box(data: st.DataObject, n_in: int, n_out: int, seed: int) -> None:
    rnd = random.Random(seed)
    lo, hi = data.draw(boxes(n_in))
    polytopes = data.draw(st.lists(st.lists(rows(n_out), max_size=3), min_size=1, max_size=3))
    lines = [f"(assert {atom})" for atom in box_atoms(lo, hi, rnd)]
    if len(polytopes) == 1:
        lines += [f"(assert {row_atom(a, b, rnd)})" for a, b in polytopes[0]]
    else:
        ands = [f"(and {' '.join(row_atom(a, b, rnd) for a, b in p)})" for p in polytopes]
        lines.append(f"(assert (or {' '.join(ands)}))")
    rnd.shuffle(lines)
    prop = parse_vnnlib(decls(n_in, n_out) + "\n".join(lines))
    assert (prop.n_inputs, prop.n_outputs, len(prop.cases)) == (n_in, n_out, 1)
    (case,) = prop.cases
    assert np.array_equal(case.box.lo, lo) and np.array_equal(case.box.hi, hi)
    assert len(case.unsafe) == len(polytopes)
    for got, want in zip(case.unsafe, polytopes, strict=True):
        A = np.array([a for a, _ in want]).reshape(-1, n_out)
        b = np.array([b for _, b in want])
        assert np.array_equal(sorted_rows(got.A, got.b), sorted_rows(A, b))


@settings(max_examples=100, deadline=None)
@given(data=st.data(), n_in=st.integers(1, 3), n_out=st.integers(1, 3), seed=st.integers(0, 2**32))
def test_round_trip_disjunction_of_boxes(
    data: st.DataObject, n_in: int, n_out: int, seed: int
) -> None:
    rnd = random.Random(seed)
    terms = data.draw(
        st.lists(st.tuples(boxes(n_in), st.lists(rows(n_out), max_size=3)), min_size=1, max_size=4)
    )
    ands = []
    expected: dict[tuple[tuple[float, ...], tuple[float, ...]], list[np.ndarray]] = {}
    for (lo, hi), polytope in terms:
        atoms = box_atoms(lo, hi, rnd) + [row_atom(a, b, rnd) for a, b in polytope]
        rnd.shuffle(atoms)
        ands.append(f"(and {' '.join(atoms)})")
        A = np.array([a for a, _ in polytope]).reshape(-1, n_out)
        key = (tuple(x + 0.0 for x in lo), tuple(x + 0.0 for x in hi))
        expected.setdefault(key, []).append(sorted_rows(A, np.array([b for _, b in polytope])))
    body = "\n  ".join(ands)
    prop = parse_vnnlib(decls(n_in, n_out) + f"(assert (or\n  {body}\n))")
    got = {
        (tuple(c.box.lo), tuple(c.box.hi)): [sorted_rows(p.A, p.b) for p in c.unsafe]
        for c in prop.cases
    }
    assert got.keys() == expected.keys()
    for key, want in expected.items():
        assert len(got[key]) == len(want)
        assert all(np.array_equal(g, w) for g, w in zip(got[key], want, strict=True))
