"""Training jobs as Ray tasks, on a real local cluster (a head and worker nodes on loopback) started here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_FLAGS, tiny

from digit_recognizer.data import Digits
from digit_recognizer.execute import InProcess
from digit_recognizer.jobs import JobRecord, ensemble_jobs
from digit_recognizer.rundir import RunDir
from digit_recognizer.runs import train_run

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")
from ray.cluster_utils import Cluster  # noqa: E402

from digit_recognizer.cluster import RayCluster  # noqa: E402

pytestmark = pytest.mark.cluster
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
    """After the module's tests, every Ray process they started has ended (within 15 s)."""
    yield
    deadline = time.monotonic() + 15
    while ray_processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not ray_processes()


@pytest.fixture(scope="module")
def digits(embedded) -> Digits:
    """400 real digits: enough for 2 folds of tiny networks."""
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


def records(out: Path, digits: Digits, members: int, folds: int = 1) -> dict[str, JobRecord]:
    """Every job's record of a tiny ensemble trained into ``out``, by name, read back against its plan."""
    run_dir = RunDir(out)
    return {job.name: run_dir.read_job(job) for job in ensemble_jobs("fast", tiny(), digits.labels, members, folds)}


@pytest.mark.slow
def test_ray_jobs_give_the_same_results_as_in_process(cluster, digits, tmp_path):
    """An ensemble trained as Ray tasks (one CPU each) gives the same metrics, held-out probabilities and files as
    the same ensemble trained in this process with one thread; each job records the resources it was given."""
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
    a, b = records(tmp_path / "here", digits, 2, 2), records(tmp_path / "there", digits, 2, 2)
    assert sorted(a) == sorted(b) == ["member0-fold0", "member0-fold1", "member1-fold0", "member1-fold1"]
    for name in a:
        np.testing.assert_allclose(a[name].proba, b[name].proba, atol=1e-6)
        assert a[name].summary.accuracy == b[name].summary.accuracy
        assert b[name].summary.resources == {"CPU": 1.0}
    files = {p.relative_to(tmp_path / "here") for p in (tmp_path / "here").rglob("*")}
    assert files == {p.relative_to(tmp_path / "there") for p in (tmp_path / "there").rglob("*")}
    assert there["execution"]["engine"] == "ray" and here["execution"]["engine"] == "in-process"


class HeldDigits(Digits):
    """Digits whose images, when a training job reads them on a Ray worker, first mark the job as started on its
    node (the file ``started-<node id>`` in ``gate``), then wait until the test creates ``gate/go``. Read in
    the process that made them, they never wait."""

    def __init__(self, digits: Digits, gate: Path) -> None:
        super().__init__(digits.images, digits.labels)
        self.gate, self.driver = gate, os.getpid()

    def __getattribute__(self, name: str) -> object:
        if name == "images" and os.getpid() != object.__getattribute__(self, "driver"):
            gate = object.__getattribute__(self, "gate")
            (gate / f"started-{ray.get_runtime_context().get_node_id()}").touch()
            deadline = time.monotonic() + 120  # a failed test's job stops waiting in the end
            while not (gate / "go").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        return object.__getattribute__(self, name)


@pytest.fixture
def held_digits(digits, tmp_path) -> HeldDigits:
    """The digits, held on the workers until the test lets them go; shipped to Ray with their class (the workers
    cannot import this test module)."""
    module = sys.modules[__name__]
    ray.cloudpickle.register_pickle_by_value(module)
    (tmp_path / "gate").mkdir()
    yield HeldDigits(digits, tmp_path / "gate")
    ray.cloudpickle.unregister_pickle_by_value(module)


@pytest.mark.slow
def test_a_node_that_dies_mid_run_has_its_jobs_retried(cluster, held_digits, tmp_path):
    """The only worker node dies while the first job trains on it (held there until the test lets it go); a
    new node joins, and every job, the interrupted one included, runs to the end on it."""
    doomed = next(iter(cluster.worker_nodes))
    executor = RayCluster(cluster.address, cpus_per_job=1)
    finished = {}

    def drive():
        finished["metrics"] = train_run(held_digits, tmp_path / "out", "fast", tiny(), progress=False, members=2,
                                        executor=executor)

    driver = threading.Thread(target=drive)
    driver.start()
    started = held_digits.gate / f"started-{doomed.node_id}"
    deadline = time.monotonic() + 300  # a worker's first start (a process importing torch) is slow on a busy machine
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert started.exists(), "no job started on the worker node"
    assert not list((tmp_path / "out").glob("jobs/*/job.json"))  # held: nothing can have finished
    cluster.remove_node(doomed, allow_graceful=False)
    survivor = cluster.add_node(num_cpus=1)
    (held_digits.gate / "go").touch()
    driver.join(timeout=300)
    executor.close()
    assert "metrics" in finished, "the run did not complete"
    assert (held_digits.gate / f"started-{survivor.node_id}").exists()
    for record in records(tmp_path / "out", held_digits, members=2).values():
        assert record.summary.where.startswith(survivor.node_id[:8])  # retried on the node that lived


@pytest.mark.slow
def test_an_interrupted_driver_resubmits_only_unfinished_jobs(cluster, digits, tmp_path, monkeypatch):
    """A driver interrupted after its first result has written that job only (no temporary file left); run
    again, it submits only the two unfinished jobs and completes the ensemble."""
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


@pytest.mark.slow
def test_fractional_gpus_are_scheduled_as_asked(digits, tmp_path):
    """On a node with one (logical) GPU, four jobs of a quarter GPU each are given a quarter of GPU 0, and train
    on CUDA only where torch has it; a job asking for more GPUs than any node has is refused at once."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 4, "num_gpus": 1})  # a logical GPU
    try:
        executor = RayCluster(cluster.address, cpus_per_job=1, gpus_per_job=0.25)
        train_run(digits, tmp_path / "out", "fast", tiny(), progress=False, members=4, executor=executor)
        executor.close()
        for record in records(tmp_path / "out", digits, members=4).values():
            assert record.summary.resources == {"CPU": 1.0, "GPU": 0.25}
            assert record.summary.where.endswith("gpu 0")
            assert record.summary.device == ("cuda" if torch.cuda.is_available() else "cpu")
        with pytest.raises(ValueError, match="no node can take"):
            RayCluster(cluster.address, cpus_per_job=1, gpus_per_job=2)
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.mark.slow
def test_the_command_line_with_a_local_cluster(small_data_dir, tmp_path):
    """run --cluster auto in a process of its own trains the ensemble's 4 jobs on Ray, writes the submission, and
    reports one line per finished job."""
    command = [sys.executable, "-m", "digit_recognizer.cli", "run", "--preset", "ensemble", "--cluster", "auto",
               "--members", "2", "--folds", "2", *TINY_FLAGS, "--data-dir", str(small_data_dir),
               "--out", str(tmp_path / "out")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["execution"]["engine"] == "ray" and len(metrics["execution"]["jobs"]) == 4
    assert (tmp_path / "out" / "submission.csv").is_file()
    lines = [line for line in result.stderr.splitlines() if "held-out accuracy" in line]
    assert len(lines) == 4  # one line per finished job: name, accuracy, time, where


def test_an_unreachable_cluster_is_one_line(tmp_path, capsys):
    """--cluster at an address where nothing listens exits 2 with one line naming the address."""
    from digit_recognizer.cli import main

    code = main(["train", "--out", str(tmp_path / "o"), "--cluster", "127.0.0.1:1", "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "--cluster 127.0.0.1:1" in err and len(err.strip().splitlines()) == 1, err
