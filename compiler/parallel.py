"""Run one function over many items in parallel: local processes, Dask or Ray.

``parallel_map`` yields ``(item, result)`` as each item finishes, where
``result`` is the exception when the call raised or its worker died, so one
bad item never stops the rest.  Workers run single-threaded BLAS: several
BLAS thread pools on few cores thrash.  The function and items must pickle
(a module-level function; plain data).
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from functools import partial
from typing import Any, TypeVar

from relugate.compiler.errors import BadSpec, RelugateError

T = TypeVar("T")
BACKENDS = ("auto", "local", "dask", "ray")
INSTALL = {
    "dask": 'pip install "relugate[distributed]" (or: pip install "dask[distributed]")',
    "ray": "pip install ray",
}
MODULES = {"dask": ("dask", "distributed"), "ray": ("ray",)}
THREAD_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
Done = Iterator[tuple[T, Any]]


class BackendMissing(RelugateError):
    """A parallel backend was asked for but is not installed."""

    kind = "backend not installed"


def installed(backend: str) -> bool:
    return all(importlib.util.find_spec(name) is not None for name in MODULES.get(backend, ()))


def resolve_backend(name: str, scheduler: str | None = None) -> str:
    """``auto`` is dask when installed (or a scheduler is given), else local."""
    if name not in BACKENDS:
        raise BadSpec(f"--backend must be one of {', '.join(BACKENDS)}, not {name!r}")
    if name == "auto":
        name = "dask" if scheduler or installed("dask") else "local"
    if name == "local" and scheduler:
        raise BadSpec("--scheduler needs --backend dask or ray")
    if not installed(name):
        raise BackendMissing(
            f"--backend {name}: {name} is not installed; install it with: {INSTALL[name]}"
        )
    return name


def parallel_map(
    fn: Callable[[T], Any],
    items: Sequence[T],
    backend: str = "local",
    workers: int = 1,
    scheduler: str | None = None,
) -> Done[T]:
    """``(item, fn(item) or the exception it raised)``, in order of completion."""
    runner = {"local": _local, "dask": _dask, "ray": _ray}[backend]
    yield from runner(fn, items, max(1, workers), scheduler)


def init_worker() -> None:
    """Single-threaded BLAS in a worker, also for libraries that loaded before this ran."""
    os.environ.update(THREAD_ENV)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:
        pass


@contextmanager
def _thread_env() -> Iterator[None]:
    """THREAD_ENV in os.environ while workers spawn (they read it before numpy loads BLAS);
    then this process's environment as it was (Dask's nannies change it too)."""
    saved = dict(os.environ)
    os.environ.update(THREAD_ENV)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _get(result: Callable[[], Any]) -> Any:
    """A remote call's result, or the exception it raised (a worker that died, too)."""
    try:
        return result()
    except Exception as exc:
        return exc


def _local(
    fn: Callable[[T], Any], items: Sequence[T], workers: int, scheduler: str | None
) -> Done[T]:
    if workers == 1 or len(items) == 1:  # in this process: no start-up cost
        for item in items:
            yield item, _get(partial(fn, item))
        return
    context = multiprocessing.get_context("spawn")  # a fork would copy the parent's BLAS threads
    with ProcessPoolExecutor(min(workers, len(items)), context, init_worker) as pool:
        with _thread_env():  # spawn-context workers start on submit
            futures = {pool.submit(fn, item): item for item in items}
        for future in as_completed(futures):
            yield futures[future], _get(future.result)


def _dask(
    fn: Callable[[T], Any], items: Sequence[T], workers: int, scheduler: str | None
) -> Done[T]:
    import dask
    from dask.distributed import Client
    from dask.distributed import as_completed as dask_completed

    env = {f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in THREAD_ENV.items()}
    with dask.config.set(env), _thread_env():
        if scheduler:
            client = Client(scheduler)
        else:
            client = Client(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=40,  # logging.ERROR
            )
    with client:
        client.run(init_worker)
        futures = {client.submit(fn, item, pure=False): item for item in items}
        for future in dask_completed(list(futures)):
            yield futures[future], _get(future.result)


def _ray(
    fn: Callable[[T], Any], items: Sequence[T], workers: int, scheduler: str | None
) -> Done[T]:
    import ray

    options: dict[str, Any] = {
        "runtime_env": {"env_vars": dict(THREAD_ENV)},
        "include_dashboard": False,
    }
    options.update({"address": scheduler} if scheduler else {"num_cpus": workers})
    ray.init(**options)
    try:
        remote = ray.remote(num_cpus=1)(fn)
        refs = {remote.remote(item): item for item in items}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                yield refs[ref], _get(partial(ray.get, ref))
    finally:
        ray.shutdown()
