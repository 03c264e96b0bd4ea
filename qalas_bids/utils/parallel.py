"""Run independent pieces of work (runs, participants, figures) in forked worker processes."""
from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable

_TASK: Callable[[int], Any] | None = None


def _run_task(index: int) -> Any:
    return _TASK(index)


def fork_map(task: Callable[[int], Any], n_items: int, workers: int) -> list:
    """``[task(i) for i in range(n_items)]``, in up to ``workers`` forked processes.

    The workers are forked after ``task`` is set, so it may be a closure over large arrays:
    nothing is pickled but the index and the result (which must be picklable; an exception
    raised by a task is raised here). One worker, one item or no ``fork`` on this platform:
    the tasks run here, one after the other. Not reentrant (a task must not call it).
    """
    global _TASK
    workers = min(int(workers), n_items)
    if workers < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return [task(i) for i in range(n_items)]
    _TASK = task
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"))
    try:
        return list(pool.map(_run_task, range(n_items)))
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)  # the first error stops the queued tasks
        raise
    finally:
        pool.shutdown(wait=True)
        _TASK = None
