"""--tensorboard: event files written by the driver from the jobs' records, read back with TensorBoard's reader."""

from __future__ import annotations

import io
import json
import sys

import pandas as pd
import pytest
from PIL import Image

from digit_recognizer.cli import main

pytest.importorskip("tensorboard", reason="the tensorboard package is not installed (the tensorboard extra)")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

SCALARS = {"loss/train": "loss", "loss/validation": "val_loss", "accuracy/train": "accuracy",
           "accuracy/validation": "val_accuracy", "learning_rate": "lr", "images_per_second": "images_per_second"}


def read_events(folder) -> EventAccumulator:
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    return events


def hparams(events: EventAccumulator) -> dict:
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    values = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    return {key: getattr(value, value.WhichOneof("kind")) for key, value in values.items()}


def train(data_dir, out, *flags: str) -> int:
    return main(["train", "--train", str(data_dir / "train.csv"), "--model", "fast", "--out", str(out), "--quiet",
                 *flags])


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory, small_data_dir):
    out = tmp_path_factory.mktemp("tb") / "run"
    assert train(small_data_dir, out, "--epochs", "3", "--tensorboard") == 0
    return out


def test_per_epoch_scalars_are_the_history(logged_run):
    events = read_events(logged_run / "tensorboard" / "run")
    history = pd.read_csv(logged_run / "history.csv")
    for tag, column in SCALARS.items():
        read = events.Scalars(tag)
        assert [e.step for e in read] == [1, 2, 3], tag
        assert [e.value for e in read] == pytest.approx(history[column].tolist(), rel=1e-6), tag


def test_figures_are_images_and_settings_with_final_metrics_are_hparams(logged_run):
    events = read_events(logged_run / "tensorboard" / "run")
    for tag, name in (("confusion_matrix", "confusion_matrix.png"), ("errors", "errors.png")):
        (logged,) = events.Images(tag)
        with Image.open(io.BytesIO(logged.encoded_image_string)) as image, Image.open(logged_run / name) as figure:
            assert image.size == figure.size
    values = hparams(events)
    settings = json.loads((logged_run / "run.json").read_text())["train"]
    assert values["method"] == "fast" and values["kind"] == "single"
    assert values["epochs"] == 3 and values["lr"] == pytest.approx(settings["lr"])
    assert values["filters"] == ",".join(map(str, settings["filters"]))
    metrics = json.loads((logged_run / "metrics.json").read_text())
    for key in ("val_accuracy", "val_loss"):
        assert events.Scalars(f"final/{key}")[0].value == pytest.approx(metrics[key], rel=1e-6)


def test_an_ensemble_logs_each_member_as_its_own_run(small_data_dir, tmp_path):
    out = tmp_path / "ensemble"
    assert train(small_data_dir, out, "--epochs", "2", "--members", "2", "--tensorboard") == 0
    assert sorted(p.name for p in (out / "tensorboard").iterdir()) == ["member0", "member1", "run"]
    seeds = []
    for member in ("member0", "member1"):
        events = read_events(out / "tensorboard" / member)
        history = pd.read_csv(out / "jobs" / member / "history.csv")
        assert [e.value for e in events.Scalars("accuracy/validation")] == pytest.approx(
            history["val_accuracy"].tolist(), rel=1e-6)
        job = json.loads((out / "jobs" / member / "job.json").read_text())
        assert events.Scalars("final/held_out_accuracy")[0].value == pytest.approx(job["accuracy"], rel=1e-6)
        values = hparams(events)
        assert values["job"] == member
        seeds.append(values["seed"])
    assert seeds[0] != seeds[1]
    run = read_events(out / "tensorboard" / "run")
    assert sorted(run.Tags()["images"]) == ["confusion_matrix", "errors"]
    assert hparams(run)["members"] == 2
    metrics = json.loads((out / "metrics.json").read_text())
    assert run.Scalars("final/ensemble_accuracy")[0].value == pytest.approx(metrics["ensemble_accuracy"], rel=1e-6)


def test_the_flag_changes_no_result_and_a_run_resumes_with_or_without_it(small_data_dir, tmp_path):
    out = tmp_path / "run"
    assert train(small_data_dir, out, "--epochs", "2") == 0
    def identity() -> dict:  # what made the run: run.json less its list of the run's files
        what = json.loads((out / "run.json").read_text())
        del what["files"]
        return what

    manifest = identity()
    assert not (out / "tensorboard").exists()
    for _ in range(2):  # finished before: its events are written from the job's record, and rewritten, not added
        assert train(small_data_dir, out, "--epochs", "2", "--tensorboard") == 0
        assert identity() == manifest
        recorded = json.loads((out / "run.json").read_text())["files"]
        assert all(f"tensorboard/run/{p.name}" in recorded for p in (out / "tensorboard" / "run").iterdir())
        files = sorted(p.name.rsplit(".", 1)[-1] for p in (out / "tensorboard" / "run").iterdir())
        assert files == ["job", "run"]
        events = read_events(out / "tensorboard" / "run")
        assert [e.step for e in events.Scalars("loss/train")] == [1, 2]
        assert len(events.Images("errors")) == 1
    assert train(small_data_dir, out, "--epochs", "2") == 0


def test_without_tensorboard_installed_the_flag_is_refused_before_training(small_data_dir, tmp_path, capsys,
                                                                        monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    out = tmp_path / "run"
    assert train(small_data_dir, out, "--tensorboard") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'digit-recognizer[tensorboard]'" in err
    assert not out.exists()
