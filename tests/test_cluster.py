"""Training jobs as Ray tasks, on a real local cluster (a head and worker nodes on loopback) started here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from digit_recognizer.config import method_config
from digit_recognizer.data import Digits
from digit_recognizer.jobs import InProcess
from digit_recognizer.pipeline import train_run
from digit_recognizer.rundir import RunDir

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")
from ray.cluster_utils import Cluster  # noqa: E402

from digit_recognizer.cluster import RayCluster  # noqa: E402

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def ray_processes() -> list[str]:
    """Ray's own processes (raylet, GCS, workers) in this session."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.getsid(int(pid)) != os.getsid(0):
                continue
            command = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(name in command for name in ("raylet", "gcs_server", "ray::", "ray/_private", "ray/dashboard")):
            found.append(f"{pid}: {command[:80]}")
    return found


@pytest.fixture(scope="module", autouse=True)
def no_ray_process_left_behind():
    yield
    deadline = time.monotonic() + 15
    while ray_processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not ray_processes()


def tiny(epochs: int = 1):
    cfg = method_config("fast")
    cfg.filters, cfg.dense, cfg.epochs = (4, 8, 8), 16, epochs
    return cfg


@pytest.fixture(scope="module")
def digits(embedded) -> Digits:
    return Digits(embedded[0].images[:400], embedded[0].labels[:400])


@pytest.fixture
def cluster():
    """A head that runs nothing and one worker node of one CPU; torn down with every Ray process it started."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def records(out) -> dict[str, dict]:
    run_dir = RunDir(out)
    return {name: run_dir.read_job(name) for name in run_dir.read_manifest()["jobs"]}


def test_ray_jobs_give_the_same_results_as_in_process(cluster, digits, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each task: one CPU, one thread
    try:
        here = train_run(digits, tmp_path / "here", "fast", tiny(), progress=False, members=2, folds=2,
                         executor=InProcess("cpu"))
    finally:
        torch.set_num_threads(threads)
    executor = RayCluster(cluster.address, cpus_per_job=1)
    try:
        there = train_run(digits, tmp_path / "there", "fast", tiny(), progress=False, members=2, folds=2,
                          executor=executor)
    finally:
        executor.close()
    assert there["table"] == [{**row, "train_seconds": row_t["train_seconds"]}
                              for row, row_t in zip(here["table"], there["table"], strict=True)]
    a, b = records(tmp_path / "here"), records(tmp_path / "there")
    assert sorted(a) == sorted(b) == ["member0-fold0", "member0-fold1", "member1-fold0", "member1-fold1"]
    for name in a:
        np.testing.assert_allclose(a[name].proba, b[name].proba, atol=1e-6)
        assert a[name].summary["accuracy"] == b[name].summary["accuracy"]
        assert b[name].summary["resources"] == {"CPU": 1.0}
    files = {p.relative_to(tmp_path / "here") for p in (tmp_path / "here").rglob("*")}
    assert files == {p.relative_to(tmp_path / "there") for p in (tmp_path / "there").rglob("*")}
    assert there["execution"]["engine"] == "ray" and here["execution"]["engine"] == "in-process"


def test_a_node_that_dies_mid_run_has_its_jobs_retried(cluster, digits, tmp_path):
    doomed = next(iter(cluster.worker_nodes))
    executor = RayCluster(cluster.address, cpus_per_job=1)
    finished = {}

    def drive():
        finished["metrics"] = train_run(digits, tmp_path / "out", "fast", tiny(epochs=6), progress=False,
                                        members=2, executor=executor)

    driver = threading.Thread(target=drive)
    driver.start()
    time.sleep(2)  # the first job is starting or training on the only worker node
    assert not (tmp_path / "out" / "jobs" / "member0" / "job.json").exists()
    cluster.remove_node(doomed, allow_graceful=False)
    survivor = cluster.add_node(num_cpus=1)
    driver.join(timeout=120)
    executor.close()
    assert "metrics" in finished, "the run did not complete"
    for record in records(tmp_path / "out").values():
        assert record.summary["where"].startswith(survivor.node_id[:8])  # retried on the node that lived


def test_an_interrupted_driver_resubmits_only_unfinished_jobs(cluster, digits, tmp_path, monkeypatch):
    executor = RayCluster(cluster.address, cpus_per_job=1)
    real_write = RunDir.write_job

    def write_then_interrupt(self, result):
        real_write(self, result)
        raise KeyboardInterrupt

    monkeypatch.setattr(RunDir, "write_job", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        train_run(digits, tmp_path / "out", "fast", tiny(), progress=False, members=3, executor=executor)
    monkeypatch.setattr(RunDir, "write_job", real_write)
    assert len(list((tmp_path / "out").glob("jobs/*/job.json"))) == 1
    assert not list((tmp_path / "out").rglob("*.tmp"))

    submitted = []
    real_call = RayCluster.__call__
    monkeypatch.setattr(RayCluster, "__call__",
                        lambda self, jobs, *a: submitted.extend(j.name for j in jobs) or real_call(self, jobs, *a))
    metrics = train_run(digits, tmp_path / "out", "fast", tiny(), progress=False, members=3, executor=executor)
    executor.close()
    assert len(submitted) == 2 and metrics["members"] == 3
    assert len(list((tmp_path / "out").glob("jobs/*/job.json"))) == 3


def test_fractional_gpus_are_scheduled_as_asked(digits, tmp_path):
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 4, "num_gpus": 1})  # a logical GPU
    try:
        executor = RayCluster(cluster.address, cpus_per_job=1, gpus_per_job=0.25)
        train_run(digits, tmp_path / "out", "fast", tiny(), progress=False, members=4, executor=executor)
        executor.close()
        for record in records(tmp_path / "out").values():
            assert record.summary["resources"] == {"CPU": 1.0, "GPU": 0.25}
            assert record.summary["where"].endswith("gpu 0")
            assert record.summary["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
        with pytest.raises(ValueError, match="no node can take"):
            RayCluster(cluster.address, cpus_per_job=1, gpus_per_job=2)
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_the_command_line_with_a_local_cluster(small_data_dir, tmp_path):
    command = [sys.executable, "-m", "digit_recognizer.cli", "run", "--preset", "ensemble", "--cluster", "auto",
               "--members", "2", "--folds", "2", "--epochs", "1", "--filters", "4,8,8", "--dense", "16",
               "--data-dir", str(small_data_dir), "--out", str(tmp_path / "out")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["execution"]["engine"] == "ray" and len(metrics["execution"]["jobs"]) == 4
    assert (tmp_path / "out" / "submission.csv").is_file()
    lines = [line for line in result.stderr.splitlines() if "held-out accuracy" in line]
    assert len(lines) == 4  # one line per finished job: name, accuracy, time, where


def test_an_unreachable_cluster_is_one_line(tmp_path, capsys):
    from digit_recognizer.cli import main

    code = main(["train", "--out", str(tmp_path / "o"), "--cluster", "127.0.0.1:1", "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "--cluster 127.0.0.1:1" in err and len(err.strip().splitlines()) == 1, err
