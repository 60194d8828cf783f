"""Run the per-image decode jobs in worker processes, with a progress bar, keeping the input order."""
from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Callable, Sequence, TypeVar

from tqdm import tqdm

Task = TypeVar("Task")
Result = TypeVar("Result")


def _one_thread_per_worker() -> None:
    # Each worker already owns a core; OpenCV's own thread pool on top would only oversubscribe them.
    import cv2

    cv2.setNumThreads(1)


def run_parallel(job: Callable[[Task], Result], tasks: Sequence[Task], workers: int, label: str) -> list[Result]:
    """`job` over `tasks` in `workers` processes (1 = in this process, no start-up cost); results in task order."""
    results: list = [None] * len(tasks)
    with tqdm(total=len(tasks), desc=label, unit="img", dynamic_ncols=True) as bar:
        if workers <= 1 or len(tasks) <= 1:
            for index, task in enumerate(tasks):
                results[index] = job(task)
                bar.update()
            return results
        # spawn, not fork: forking a parent that already runs OpenCV or torch threads can deadlock the child.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=context,
                                 initializer=_one_thread_per_worker) as pool:
            futures = {pool.submit(job, task): index for index, task in enumerate(tasks)}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                bar.update()
    return results
