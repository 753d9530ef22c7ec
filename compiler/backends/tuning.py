"""MetaSchedule tuning with a wall-clock budget and a reusable database folder.

MetaSchedule bounds tuning by trial counts only; ``deadline.py``'s task
scheduler stops picking tasks once ``seconds`` have passed (overrun: at most
the batch of candidates in flight), and the report gives the seconds spent.  Records go to
a JSON database in ``db_dir`` (``database_workload.json``,
``database_tuning_record.json``); a later run with the same folder starts its
search from them, and ``apply`` alone (``seconds=0``) reuses them without
tuning.

Needs psutil and cloudpickle (MetaSchedule's process pools) and, for the
XGBoost cost model, xgboost: ``pip install 'relugate[tune]'``.  Without
xgboost the search falls back to a random cost model (and says so).
apache-tvm-ffi must be 0.1.14.post1: newer releases crash MetaSchedule.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from relugate.compiler.backends.deadline import scheduler_and_callback
from relugate.compiler.errors import RelugateError

TRIALS_PER_ITER = 32
MAX_TRIALS = 100_000  # the time budget, not this, ends tuning
WORKER_TIMEOUT = 60.0  # seconds per candidate build or run (TVM's 30 s is tight under load)


@dataclass
class TuneReport:
    seconds_budget: float
    seconds: float
    trials: int
    tasks: int
    tasks_skipped: list[str]  # MetaSchedule cannot build their search space: TVM's schedule
    tasks_with_records_before: int
    records: int  # tuning records in the database afterwards (all runs)
    cost_model: str
    database: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _require_tuning_packages() -> str:
    missing = [m for m in ("psutil", "cloudpickle") if importlib.util.find_spec(m) is None]
    if missing:
        raise RelugateError(
            f"MetaSchedule tuning needs {', '.join(missing)}: pip install 'relugate[tune]'"
        )
    return "xgb" if importlib.util.find_spec("xgboost") is not None else "random"


def legalize(mod: Any, target: Any) -> Any:
    """Relax ops to fused TIR functions: what MetaSchedule extracts its tasks from.

    Reshapes become views (``R.reshape``) here, before tuning: a reshape left as a
    TIR function gets a tuned schedule, and ``tvm.compile``'s own
    ``RewriteDataflowReshape`` no longer recognizes it, so mnist's input
    reshape ran as a 109 us copying kernel at batch 1024.
    """
    import tvm
    from tvm import relax

    with target:
        return tvm.transform.Sequential(
            [
                relax.transform.DecomposeOpsForInference(),
                relax.transform.CanonicalizeBindings(),
                relax.get_pipeline("zero"),
                relax.transform.RewriteDataflowReshape(),
            ]
        )(mod)


def _build_candidate(mod: Any, target: Any, _params: Any) -> Any:
    """MetaSchedule's ``default_build`` without ``import tvm.s_tir.tensor_intrin``.

    That import registers every target's tensor intrinsics (CUDA's alone parse
    for seconds to over a minute on a busy machine) and the builder pays it in a
    fresh worker process for every batch of candidates, so with the default
    builder each batch timed out.  Float32 CPU schedules use no intrinsics.
    """
    from tvm.driver import build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return build(mod, target=target)


def _cpu_tensor_intrinsics_only() -> None:
    """Register the CPU tensor intrinsics without CUDA's, ROCm's and Hexagon's.

    ``TuneContext`` imports ``tvm.s_tir.tensor_intrin``, whose ``__init__``
    parses every target's intrinsics (CUDA's took 70 of 97 s on a loaded
    2-core machine).  For CPU tuning, install the package module without
    running its ``__init__`` and import the x86 and Arm parts; anything
    unexpected falls back to the full import.
    """
    import importlib
    import importlib.util
    import sys

    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules:
        return
    try:
        spec = importlib.util.find_spec(name)
        if spec is None:
            return
        package = importlib.util.module_from_spec(spec)
        sys.modules[name] = package
        for sub in ("x86", "arm_cpu"):
            setattr(package, sub, importlib.import_module(f"{name}.{sub}"))
        import tvm.s_tir

        setattr(tvm.s_tir, "tensor_intrin", package)  # noqa: B010
    except Exception:  # a TVM whose layout differs: pay for the full import instead
        sys.modules.pop(name, None)
        importlib.import_module(name)


def _task_logger(db_dir: Path, index: int, name: str) -> logging.Logger:
    """A logger writing to ``db_dir/logs/task_<index>_<name>.log`` (name cut to 80
    characters; one handler per file)."""
    path = db_dir / "logs" / f"task_{index}_{name[:80]}.log"  # fused names run long
    logger = logging.getLogger(f"relugate.tuning.{abs(hash(str(path)))}")
    if not logger.handlers:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, mode="a")
        handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
    return logger


def _tune_contexts(extracted: Any, db_dir: Path) -> tuple[list[Any], list[float]]:
    """MetaSchedule's ``extracted_tasks_to_tune_contexts`` with plain file loggers.

    Its own loggers come from ``logging.config.dictConfig`` and list the names of the
    handlers already on its global logger; an unnamed one (pytest's log capture adds
    some) made the second tuning in a process fail with ``'NoneType' object has no
    attribute 'format'``."""
    from tvm.s_tir.meta_schedule import TuneContext

    contexts, weights = [], []
    for i, task in enumerate(extracted):
        if task.mod.attrs.get("tirx.is_scheduled", False):
            continue
        ctx = TuneContext(
            mod=task.dispatched[0],
            target=task.target,
            space_generator="post-order-apply",
            search_strategy="evolutionary",
            task_name=task.task_name,
            logger=_task_logger(db_dir, i, task.task_name),
            rand_state=-1,
            num_threads=1,
        )
        contexts.append(ctx.clone())
        weights.append(float(task.weight))
    return contexts, weights


def _schedulable(
    contexts: list[Any], weights: list[float]
) -> tuple[list[Any], list[float], list[str]]:
    """The tasks whose design space MetaSchedule can generate, and the names of the rest.

    One failing task aborts ``tune_tasks`` for all of them.  Seen: the fused last
    layer of a gated network (gate ops and the packed ``concat`` output in one
    kernel) fails the ``reverse-compute-at`` of the CPU tiling rules; skipped, it
    keeps TVM's default schedule while the other layers are tuned.
    """
    kept: list[Any] = []
    kept_weights: list[float] = []
    skipped: list[str] = []
    for ctx, weight in zip(contexts, weights, strict=True):
        try:
            ctx.generate_design_space()
        except Exception:  # a ScheduleError from inside TVM: leave this kernel untuned
            skipped.append(str(ctx.task_name))
            continue
        kept.append(ctx)
        kept_weights.append(weight)
    return kept, kept_weights, skipped


def _records_before(database: Any, contexts: list[Any]) -> int:
    found = 0
    for ctx in contexts:
        if database.has_workload(ctx.mod):
            found += bool(database.get_top_k(database.commit_workload(ctx.mod), 1))
    return found


def tune(mod: Any, target: Any, seconds: float, db_dir: Path) -> tuple[Any, TuneReport]:
    """Tune the legalized ``mod`` for ``seconds`` into ``db_dir``; return it with the best
    schedules applied (functions without a record keep TVM's default)."""
    from tvm.s_tir import meta_schedule as ms

    cost_model = _require_tuning_packages()
    db_dir.mkdir(parents=True, exist_ok=True)
    mod = legalize(mod, target)
    start = time.monotonic()
    if target.kind.name == "llvm":
        _cpu_tensor_intrinsics_only()
    database = ms.database.JSONDatabase(work_dir=str(db_dir))
    extracted = ms.relax_integration.extract_tasks(mod, target)
    contexts, weights = _tune_contexts(extracted, db_dir)
    contexts, weights, skipped = _schedulable(contexts, weights)
    before = _records_before(database, contexts)
    scheduler, record, progress = scheduler_and_callback(start + seconds)
    if contexts and seconds > 0:
        callbacks = [*ms.measure_callback.MeasureCallback.create("default"), record]
        with _scheduler_log(db_dir):
            run = (contexts, weights, db_dir, seconds, database, cost_model, callbacks)
            _tune_tasks(ms, *run, scheduler)
    report = TuneReport(
        seconds_budget=float(seconds),
        seconds=round(time.monotonic() - start, 3),
        trials=progress.trials,
        tasks=len(contexts),
        tasks_skipped=skipped,
        tasks_with_records_before=before,
        records=len(database),
        cost_model=cost_model,
        database=str(db_dir),
    )
    return apply(mod, target, db_dir), report


def _tune_tasks(
    ms: Any,
    contexts: list[Any],
    weights: list[float],
    db_dir: Path,
    seconds: float,
    database: Any,
    cost_model: str,
    callbacks: list[Any],
    scheduler: Any,
) -> None:
    ms.tune.tune_tasks(
        tasks=contexts,
        builder=ms.builder.LocalBuilder(
            f_build=_build_candidate, max_workers=1, timeout_sec=WORKER_TIMEOUT
        ),
        runner=ms.runner.LocalRunner(timeout_sec=WORKER_TIMEOUT),
        task_weights=weights,
        work_dir=str(db_dir),
        max_trials_global=MAX_TRIALS,
        max_trials_per_task=MAX_TRIALS,
        num_trials_per_iter=TRIALS_PER_ITER if seconds >= 300 else TRIALS_PER_ITER // 2,
        database=database,
        cost_model=cost_model,
        measure_callbacks=callbacks,
        task_scheduler=scheduler,
    )


@contextlib.contextmanager
def _scheduler_log(db_dir: Path) -> Iterator[None]:
    """MetaSchedule's own messages (the task table) into ``db_dir/logs/task_scheduler.log``
    while tuning runs."""
    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    (db_dir / "logs").mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(db_dir / "logs" / "task_scheduler.log", mode="a")
    handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()


def apply(mod: Any, target: Any, db_dir: Path) -> Any:
    """``mod`` (legalized) with the best records of ``db_dir`` applied."""
    import tvm
    from tvm import relax

    with target, tvm.transform.PassContext(opt_level=3):
        return relax.transform.MetaScheduleApplyDatabase(str(db_dir))(mod)
