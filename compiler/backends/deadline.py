"""A MetaSchedule task scheduler that stops at a wall-clock deadline.

MetaSchedule bounds tuning by trial counts only.  Terminating tasks from a
measure callback does not work: the gradient and round-robin schedulers join
a task's measurements inside ``NextTaskId`` and then return that task, so a
task terminated by the callback reaches ``Tune``'s ``ICHECK(!is_terminated)``
and the process aborts.  Instead this scheduler's ``next_task_id`` returns -1
once the deadline has passed; ``Tune`` then joins what is still running and
finishes normally.  So the budget is overrun by at most one batch of
candidates (their build and measurement).

Task choice: one round over all tasks, the one with the most work (weight x
FLOP) first, since a short budget on a busy machine may end within that round
(60 s covered 2 of 3 mnist tasks and left the 784-wide layer, 97% of the
FLOPs, untuned); then the task with the largest
``weight * best_latency / rounds`` (the ``g2`` term of MetaSchedule's
gradient scheduler: time still to win, discounted by the effort spent).
Best latencies come from a measure callback (``TaskRecord`` exposes none).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Progress:
    deadline: float
    trials: int = 0
    best: dict[int, float] = field(default_factory=dict)  # task -> best mean seconds
    rounds: dict[int, int] = field(default_factory=dict)

    def record(self, task_id: int, results: Any) -> None:
        self.trials += len(results)
        self.rounds[task_id] = self.rounds.get(task_id, 0) + 1
        for r in results:
            if r.error_msg is None and r.run_secs:
                secs = sum(float(s) for s in r.run_secs) / len(r.run_secs)
                self.best[task_id] = min(self.best.get(task_id, float("inf")), secs)

    def score(self, task_id: int, weight: float) -> float:
        best = self.best.get(task_id)
        return -1.0 if best is None else weight * best / max(1, self.rounds.get(task_id, 0))


def scheduler_and_callback(deadline: float) -> tuple[Any, Any, Progress]:
    """A ``TaskScheduler`` and a ``MeasureCallback`` sharing one ``Progress``."""
    from tvm.ir.utils import derived_object  # moved out of meta_schedule.utils in 0.27
    from tvm.s_tir import meta_schedule as ms

    progress = Progress(deadline)

    @derived_object
    class Record(ms.measure_callback.PyMeasureCallback):
        def apply(self, task_scheduler: Any, task_id: int, candidates: Any, builds: Any,
                  results: Any) -> None:  # fmt: skip
            progress.record(task_id, results)

    @derived_object
    class DeadlineScheduler(ms.task_scheduler.PyTaskScheduler):
        # only next_task_id: derived_object passes None for the others, so C++'s
        # Tune runs (the Python PyTaskScheduler.tune passes one argument too few)
        def __init__(self) -> None:
            super().__init__()
            self.started: set[int] = set()

        def next_task_id(self) -> int:
            outer = self._outer()
            tasks = outer.tasks_
            for i in range(len(tasks)):
                outer.touch_task(i)  # joins finished measurements (callbacks run)
            alive = [i for i in range(len(tasks)) if not tasks[i].is_terminated]
            if not alive or time.monotonic() >= progress.deadline:
                return -1
            fresh = [i for i in alive if i not in progress.rounds and i not in self.started]
            if fresh:  # first round: every task once, the most work (weight x FLOP) first
                pick = max(fresh, key=lambda i: float(tasks[i].task_weight) * _flop(tasks[i]))
            else:
                pick = max(alive, key=lambda i: progress.score(i, float(tasks[i].task_weight)))
            self.started.add(pick)
            if tasks[pick].measure_candidates is not None:  # still measuring: wait for it
                outer.join_running_task(pick)
            return pick

    return DeadlineScheduler(), Record(), progress


def _flop(task: Any) -> float:
    try:
        return float(task.flop)
    except (AttributeError, TypeError, ValueError):  # a TVM whose TaskRecord lacks it
        return 0.0
