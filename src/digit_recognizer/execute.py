"""Running a plan's jobs: one after another in this process, or as Ray tasks (:mod:`digit_recognizer.cluster`).

An :class:`Executor` runs jobs and yields each result as it finishes; :func:`run_jobs` reads the records of the
jobs finished earlier (checked, before any training), runs the others, and hands each result to the run
directory, the only writer, as it arrives.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from typing import Protocol

from tqdm.auto import tqdm

from . import train as training_loop  # by module: resolve_device is looked up when called
from .console import format_duration, show_bars
from .data import Digits
from .jobs import Job, JobRecord, JobResult, train_job
from .rundir import RunDir


class Executor(Protocol):
    """Runs jobs and yields each result as it finishes (in any order)."""

    def __call__(self, jobs: list[Job], digits: Digits, test: Digits | None, run_dir: RunDir,
                 progress: bool) -> Iterator[JobResult]: ...

    def execution(self) -> dict:
        """Where and how the jobs run, for metrics.json."""
        ...


class InProcess:
    """Runs jobs one after another in this process, each network resuming from its last finished epoch."""

    def __init__(self, device: str = "auto") -> None:
        self.device = str(training_loop.resolve_device(device))

    def __call__(self, jobs: list[Job], digits: Digits, test: Digits | None, run_dir: RunDir,
                 progress: bool) -> Iterator[JobResult]:
        for job in jobs:
            yield train_job(job, digits, test, self.device, progress, checkpoint=run_dir.checkpoint(job.name))

    def execution(self) -> dict:
        return {"engine": "in-process", "device": self.device}


def run_jobs(jobs: list[Job], digits: Digits, run_dir: RunDir, executor: Executor, test: Digits | None = None,
             progress: bool = True, on_record: Callable[[Job, JobRecord], None] | None = None,
             ) -> dict[str, JobRecord]:
    """Run the jobs of a plan that have not finished yet and write each result as it arrives (then hand it to
    ``on_record``, if given: TensorBoard's events, say).

    The records of the jobs finished earlier are read and checked first, before any training, so that a damaged
    one is named at once. Returns every job's record by name. With several jobs, one bar of jobs done (on a
    terminal) and one line per finished job report progress.
    """
    test_rows = len(test) if test is not None else None
    records = {job.name: run_dir.read_job(job, test_rows) for job in jobs if run_dir.finished(job.name)}
    pending = [job for job in jobs if job.name not in records]
    several = len(jobs) > 1
    bar = tqdm(total=len(jobs), initial=len(records), desc="jobs", unit="job",
               disable=not (progress and several and show_bars()), file=sys.stderr)
    if progress and several and records:
        tqdm.write(f"{len(records)} of {len(jobs)} jobs already finished in {run_dir.path}", file=sys.stderr)
    started = time.perf_counter()
    try:
        for done, result in enumerate(executor(pending, digits, test, run_dir, progress), start=1):
            records[result.job.name] = run_dir.write_job(result)
            if on_record is not None:
                on_record(result.job, records[result.job.name])
            bar.update()
            if progress and several:
                left = (len(pending) - done) * (time.perf_counter() - started) / done
                eta = f", {len(pending) - done} to go, ETA {format_duration(left)}" if done < len(pending) else ""
                name = result.job.name or "the run's own network"  # a distilled run's served student has no name
                tqdm.write(f"{name}: held-out accuracy {result.accuracy:.4f}, {result.seconds:.0f}s on "
                           f"{result.where} ({result.device}){eta}", file=sys.stderr)
    finally:
        bar.close()
    return {job.name: records[job.name] for job in jobs}
