"""Training jobs as Ray tasks: on every core of this machine, on several GPUs, or on a cluster.

``RayCluster("auto")`` starts Ray on this machine; ``RayCluster("host:6379")`` (or ``ray://host:10001``) joins
a running cluster. Either way it runs the very jobs :class:`~digit_recognizer.execute.InProcess` runs, through the
same :func:`~digit_recognizer.jobs.train_job`: each task gets the training data once from Ray's object store,
trains with ``cpus_per_job`` torch threads (on a GPU share when ``gpus_per_job`` > 0) and returns its result;
only the driver writes, each result as it arrives, so the nodes need no shared filesystem. A task whose worker
or node dies is retried; an interrupted driver cancels what is still running, and the same command run again
submits only the unfinished jobs.

Every node needs the same versions of this package, torch and ray.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

from .data import Digits
from .jobs import Job, JobResult, train_job
from .rundir import RunDir

RETRIES = 3  # times a task is started again after its worker or node died


class RayCluster:
    def __init__(self, address: str = "auto", cpus_per_job: float = 1, gpus_per_job: float = 0) -> None:
        # Fail in seconds, not minutes, when an address answers but is no cluster (read when ray is imported).
        os.environ.setdefault("RAY_py_gcs_connect_timeout_s", "5")
        os.environ.setdefault("RAY_gcs_server_port_wait_time_s", "2")
        os.environ.setdefault("RAY_gcs_rpc_server_connect_timeout_s", "2")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")  # no silent reconnect once shut down
        try:
            import ray
        except ImportError:
            raise ImportError("--cluster needs Ray: pip install 'digit-recognizer[ray]' "
                              "(or pip install -e '.[ray]' in a checkout)") from None
        self.address, self.cpus_per_job, self.gpus_per_job = address, cpus_per_job, gpus_per_job
        options = {"include_dashboard": False, "log_to_driver": False, "logging_level": "error"}
        if address == "auto":  # a new instance on this machine, never one that happens to be running
            init = {"address": "local", "num_cpus": os.cpu_count(), **options}
        else:
            _check_reachable(address)
            init = {"address": address, **options}
        try:
            ray.init(**init)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise ConnectionError(f"--cluster {address}: cannot connect ({str(err).splitlines()[0][:200]})") from None
        self.ray = ray
        self._stored: dict[int, tuple[object, object]] = {}
        if self.slots() < 1:
            resources = ray.cluster_resources()
            self.close()
            raise ValueError(f"--cluster {address}: no node can take a job of {cpus_per_job:g} CPUs and "
                             f"{gpus_per_job:g} GPUs (the cluster has {resources.get('CPU', 0):g} CPUs, "
                             f"{resources.get('GPU', 0):g} GPUs)")

    def slots(self) -> int:
        """How many jobs the cluster can run at once, by its CPUs and GPUs."""
        resources = self.ray.cluster_resources()
        slots = resources.get("CPU", 0) / self.cpus_per_job
        if self.gpus_per_job > 0:
            slots = min(slots, resources.get("GPU", 0) / self.gpus_per_job)
        return int(slots)

    def __call__(self, jobs: list[Job], digits: Digits, test: Digits | None, run_dir: RunDir,
                 progress: bool) -> Iterator[JobResult]:
        ray = self.ray
        # Resources set per call, not on the function: a function declared with GPUs would start a new worker
        # process for every task.
        task = ray.remote(_run_task).options(num_cpus=self.cpus_per_job, num_gpus=self.gpus_per_job,
                                             max_retries=RETRIES)
        data, test_data = self._put(digits), self._put(test)
        running = {task.remote(job, data, test_data): job for job in jobs}
        try:
            while running:  # short waits, so that Ctrl-C is seen at once
                done, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
                for ref in done:
                    running.pop(ref)
                    try:
                        yield ray.get(ref)
                    except ray.exceptions.RayTaskError as err:
                        raise err.cause from None  # the job's own error (a diverged training, say), as raised
        finally:  # interrupted or failed: stop what is still running; finished results are already written
            for ref in running:
                ray.cancel(ref, force=True)

    def _put(self, value: object) -> object:
        """The object store's copy of ``value``, put once however many calls (a search's trials) pass it."""
        if id(value) not in self._stored:  # the entry holds the value too, so its id cannot be reused meanwhile
            self._stored[id(value)] = (value, self.ray.put(value))
        return self._stored[id(value)][1]

    def execution(self) -> dict:
        return {"engine": "ray", "address": self.address, "cpus_per_job": self.cpus_per_job,
                "gpus_per_job": self.gpus_per_job, "nodes": len(self.ray.nodes())}

    def close(self) -> None:
        self.ray.shutdown()


def _check_reachable(address: str) -> None:
    """Refuse at once an address where nothing listens (Ray itself would retry for many minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--cluster {address}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=3).close()
    except OSError as err:
        raise ConnectionError(f"--cluster {address}: nothing answers there ({err.strerror or err})") from None


def _run_task(job: Job, digits: Digits, test: Digits | None) -> JobResult:
    """One job on a Ray worker: torch threads to match the CPUs it was given, the GPU share it was given."""
    import ray
    import torch

    context = ray.get_runtime_context()
    assigned = context.get_assigned_resources()
    torch.set_num_threads(max(1, int(assigned.get("CPU", 1))))
    # A GPU share on a node whose GPUs torch cannot use (logical GPUs, say) trains on the CPU.
    device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
    result = train_job(job, digits, test, device)
    gpus = ",".join(str(g) for g in ray.get_gpu_ids())
    result.where = f"{context.get_node_id()[:8]}@{ray.util.get_node_ip_address()}" + (f" gpu {gpus}" if gpus else "")
    result.resources = {key: float(value) for key, value in assigned.items()}
    return result
