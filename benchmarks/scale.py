"""Benchmark: the same training jobs in one process and as Ray tasks on this machine (``--cluster auto``).

    python benchmarks/scale.py --data-dir ../shared/data/digit-recognizer [--members 8] [--epochs 12]

The workload is ``--members`` fast networks on one split of all the training rows (a single fold each),
first one after another in this process with torch on every core, then as Ray tasks with one core and one
thread each (as many at once as there are cores). Reports the wall time of each, their ratio, and Ray's own
costs: starting Ray, putting the training data in its object store, an empty task's round trip with that data
on a cold worker and on a warm one, and the time per job that was neither training nor predicting.

Writes ``benchmarks/results/scale.json`` and ``scale.md`` (``--results`` to change). Run it on a quiet machine:
another process on the same cores distorts both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

from digit_recognizer.config import method_config
from digit_recognizer.data import find_csv, read_train
from digit_recognizer.execute import InProcess
from digit_recognizer.files import write_json
from digit_recognizer.runs import train_run

sys.path.insert(0, str(Path(__file__).parent))
from seed_recipe import machine


def in_task_seconds(out: Path) -> list[float]:
    """Each job's own time in its task: training plus predicting its held-out rows."""
    return [json.loads(p.read_text())["seconds"] + json.loads(p.read_text())["predict_seconds"]
            for p in sorted(out.glob("jobs/*/job.json"))]


def ray_costs(executor, digits) -> dict:
    """Start-up aside, what Ray adds: the data into the object store, an empty task with it (cold, warm)."""
    ray = executor.ray

    @ray.remote(num_cpus=1)
    def touch(data) -> int:
        import torch  # noqa: F401  (a training task imports it too)

        return len(data.images)

    started = time.perf_counter()
    ref = ray.put(digits)
    put = time.perf_counter() - started
    rounds = []
    for _ in range(4):
        started = time.perf_counter()
        ray.get(touch.remote(ref))
        rounds.append(time.perf_counter() - started)
    return {"put_seconds": round(put, 3), "first_task_seconds": round(rounds[0], 3),
            "warm_task_seconds": round(statistics.median(rounds[1:]), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data/digit-recognizer"))
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=None, help="default: the fast preset's")
    parser.add_argument("--out", type=Path, default=Path("runs/scale"))
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    digits = read_train(find_csv(args.data_dir, "train"))
    cfg = method_config("fast")
    cfg.epochs = args.epochs or cfg.epochs
    cfg.device = "cpu"
    shutil.rmtree(args.out, ignore_errors=True)
    report: dict = {"machine": machine(), "workload": f"{args.members} fast networks x 1 split of "
                    f"{len(digits):,} rows, {cfg.epochs} epochs", "jobs": args.members}

    torch.set_num_threads(os.cpu_count())
    started = time.perf_counter()
    train_run(digits, args.out / "in-process", "fast", cfg, progress=False, members=args.members,
              executor=InProcess("cpu"))
    wall_here = time.perf_counter() - started
    here = in_task_seconds(args.out / "in-process")
    print(f"in-process: {wall_here:.1f} s ({statistics.mean(here):.1f} s per job)", file=sys.stderr)

    from digit_recognizer.cluster import RayCluster

    started = time.perf_counter()
    executor = RayCluster("auto", cpus_per_job=1)
    startup = time.perf_counter() - started
    slots = executor.slots()
    costs = ray_costs(executor, digits)  # before the jobs, so that the first task meets a cold worker
    started = time.perf_counter()
    metrics = train_run(digits, args.out / "ray", "fast", cfg, progress=False, members=args.members,
                        executor=executor)
    wall_ray = time.perf_counter() - started
    executor.close()
    there = in_task_seconds(args.out / "ray")
    # Every slot's time that went neither to training nor to predicting, shared out over the jobs.
    overhead = wall_ray * slots / args.members - statistics.mean(there)
    print(f"ray: start-up {startup:.1f} s, {wall_ray:.1f} s ({statistics.mean(there):.1f} s per job, "
          f"{slots} at a time)", file=sys.stderr)

    report.update({
        "in_process": {"wall_seconds": round(wall_here, 1), "threads": os.cpu_count(),
                       "job_seconds_mean": round(statistics.mean(here), 1)},
        "ray": {"startup_seconds": round(startup, 1), "wall_seconds": round(wall_ray, 1), "jobs_at_once": slots,
                "threads_per_job": 1, "job_seconds_mean": round(statistics.mean(there), 1),
                "overhead_seconds_per_job": round(overhead, 2), **costs,
                "ensemble_accuracy": metrics["ensemble_accuracy"]},
        "ratio_in_process_over_ray": round(wall_here / (wall_ray + startup), 3),
        "ratio_without_startup": round(wall_here / wall_ray, 3),
    })
    args.results.mkdir(parents=True, exist_ok=True)
    write_json(report, args.results / "scale.json")
    rows = [
        ("wall seconds, in-process (torch on every core, one job after another)", report["in_process"]["wall_seconds"]),
        ("wall seconds, Ray (one core and thread per job, jobs side by side), start-up included",
         round(wall_ray + startup, 1)),
        ("ratio in-process / Ray (>= 1: Ray is faster)", report["ratio_in_process_over_ray"]),
        ("seconds per job in its task, in-process / Ray",
         f"{statistics.mean(here):.1f} / {statistics.mean(there):.1f}"),
        ("Ray start-up (ray.init), seconds", report["ray"]["startup_seconds"]),
        ("training data into the object store (ray.put), seconds", costs["put_seconds"]),
        ("empty task with the data: new worker process / warm worker, seconds",
         f"{costs['first_task_seconds']} / {costs['warm_task_seconds']}"),
        ("per job, slot time neither training nor predicting, seconds", report["ray"]["overhead_seconds_per_job"]),
    ]
    table = "\n".join([f"Machine: {report['machine']}; workload: {report['workload']}", "",
                       "| measure | value |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in rows)])
    (args.results / "scale.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
