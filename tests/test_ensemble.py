"""Ensembles: members that differ by seed, averaged, scored out of fold, resumed, and test-time augmentation."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY_FLAGS, tiny

import digit_recognizer.execute as execute_module
import digit_recognizer.train as train_module
from digit_recognizer.cli import main
from digit_recognizer.config import TrainConfig
from digit_recognizer.data import Digits, split_indices
from digit_recognizer.evaluate import TTA_UNSURE, network_proba, network_proba_and_tta, shared_errors, shifted
from digit_recognizer.loading import load_model
from digit_recognizer.methods import EnsembleModel
from digit_recognizer.models import build_network
from digit_recognizer.runs import train_run


@pytest.fixture(scope="module")
def digits(embedded) -> Digits:
    """300 real digits: enough for 3 folds of tiny networks."""
    train, _ = embedded
    return Digits(train.images[:300], train.labels[:300])


def test_shift_moves_pixels_and_fills_with_background():
    """A shift moves the ink by whole pixels; what leaves the image is gone, not wrapped to the other side."""
    x = torch.zeros(1, 1, 28, 28)
    x[0, 0, 5, 7] = 1
    assert shifted(x, 1, 0)[0, 0, 6, 7] == 1 and shifted(x, 0, -1)[0, 0, 5, 6] == 1
    edge = torch.zeros(1, 1, 28, 28)
    edge[0, 0, 27, :] = 1
    assert shifted(edge, 1, 0).sum() == 0  # pushed out, nothing wraps around
    assert shifted(x, -2, 2)[0, 0, 3, 9] == 1 and shifted(x, -2, 2).sum() == 1  # two pixels up and right


def test_tta_probabilities_are_well_formed(digits):
    """Test-time augmentation gives probabilities of the same shape, summing to 1, and different from one pass."""
    torch.manual_seed(0)
    network = build_network("fast", TrainConfig(filters=(4, 8, 8), dense=16))
    plain = network_proba(network, digits.images[:50])
    tta = network_proba(network, digits.images[:50], tta=True)
    assert tta.shape == plain.shape == (50, 10)
    np.testing.assert_allclose(tta.sum(1), 1.0, rtol=1e-5)
    assert not np.allclose(tta, plain)


def test_tta_shifts_only_the_images_the_network_is_unsure_of(digits):
    """Shifted copies are predicted for the images whose top probability is below the threshold, and only for
    them: those get the mean over the copies (as when every image is shifted), the others their own probabilities."""
    torch.manual_seed(0)
    network = build_network("fast", TrainConfig(filters=(4, 8, 8), dense=16))
    images = digits.images[:64]
    plain = network_proba(network, images)
    every = network_proba(network, images, tta=True, unsure_below=None)
    threshold = float(np.median(plain.max(1)))
    unsure = plain.max(1) < threshold
    assert 0 < unsure.sum() < len(images)
    seen = []
    hook = network.register_forward_hook(lambda module, inputs, output: seen.append(len(inputs[0])))
    chosen = network_proba(network, images, tta=True, unsure_below=threshold, batch_size=32)
    hook.remove()
    np.testing.assert_allclose(chosen[~unsure], plain[~unsure], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(chosen[unsure], every[unsure], rtol=1e-5, atol=1e-7)
    assert not np.allclose(chosen[unsure], plain[unsure])
    assert sum(seen) == len(images) + 4 * unsure.sum()  # the image once, four shifted copies of the unsure ones
    with pytest.raises(ValueError, match="first of the shifts"):
        network_proba(network, images, tta=True, shifts=[(1, 0), (0, 0)])


def test_both_scores_of_the_held_out_rows_come_from_one_pass(digits):
    """A member's held-out rows are scored without and with TTA as network_proba scores them apart, but each image
    is predicted once (then only the unsure ones' shifted copies), not twice."""
    torch.manual_seed(0)
    network = build_network("fast", TrainConfig(filters=(4, 8, 8), dense=16))
    images = digits.images[:64]
    seen = []
    hook = network.register_forward_hook(lambda module, inputs, output: seen.append(len(inputs[0])))
    plain, tta = network_proba_and_tta(network, images)
    hook.remove()
    np.testing.assert_allclose(plain, network_proba(network, images), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(tta, network_proba(network, images, tta=True), rtol=1e-5, atol=1e-7)
    assert sum(seen) == len(images) + 4 * int((plain.max(1) < TTA_UNSURE).sum())


def test_ensemble_averages_its_members(digits, tmp_path):
    """A 2-member ensemble's model predicts the mean of its members' probabilities; each member's files are kept."""
    metrics = train_run(digits, tmp_path, "fast", tiny(), progress=False, members=2)
    assert metrics["members"] == 2 and len(metrics["table"]) == 3 and metrics["rows_scored"] == 30
    model = load_model(tmp_path)
    assert isinstance(model, EnsembleModel) and len(model.members) == 2
    averaged = model.predict_proba(digits.images[:40])
    members = [m.predict_proba(digits.images[:40]) for m in model.members]
    np.testing.assert_allclose(averaged, np.mean(members, axis=0), rtol=1e-5)
    np.testing.assert_allclose(averaged.sum(1), 1.0, rtol=1e-5)
    for m in range(2):
        for name in ("model.safetensors", "history.csv", "config.json", "heldout.npz", "job.json"):
            assert (tmp_path / "jobs" / f"member{m}" / name).is_file()


def one_hot(predicted: list[int]) -> np.ndarray:
    return np.eye(10, dtype=np.float32)[predicted]


def test_shared_errors_count_the_rows_networks_get_wrong_together():
    labels = np.array([0, 1, 2, 3, 4, 5])
    a = one_hot([9, 9, 2, 3, 4, 5])  # wrong on rows 0, 1
    b = one_hot([9, 1, 9, 3, 4, 5])  # wrong on rows 0, 2
    c = one_hot([9, 1, 2, 9, 4, 5])  # wrong on rows 0, 3
    shared = shared_errors([a, b, c], labels)
    assert shared.errors == (2, 2, 2) and shared.average == 1  # the average errs on row 0 only
    assert shared.both == ((2, 1, 1), (1, 2, 1), (1, 1, 2))
    assert (shared.wrong_in_all, shared.wrong_in_any) == (1, 4)
    summary = shared.summary()
    assert summary["both_wrong"] == 1.0 and summary["if_independent"] == pytest.approx(2 * 2 / 6, abs=0.01)
    with pytest.raises(ValueError, match="two networks"):
        shared_errors([a], labels)


def test_an_ensembles_metrics_say_how_often_its_members_err_together(digits, tmp_path):
    metrics = train_run(digits, tmp_path, "fast", tiny(), progress=False, members=3, folds=2)
    shared, table = metrics["shared_errors"], metrics["table"]
    assert shared["rows"] == 300 and shared["errors"] == [row["errors"] for row in table[:-1]]
    assert shared["average"] == table[-1]["errors"]
    for row in table:
        assert row["errors"] == round((1 - row["accuracy"]) * 300)
        assert row["errors_tta"] == round((1 - row["accuracy_tta"]) * 300)
    assert shared["wrong_in_all"] <= shared["both_wrong"] <= max(shared["errors"]) <= shared["wrong_in_any"]
    assert "wrong in every member" in (tmp_path / "report.html").read_text()


def test_restart_trains_only_unfinished_jobs(digits, tmp_path, monkeypatch):
    """Run again after one job's record was lost, an ensemble trains that job only and scores every row."""
    train_run(digits, tmp_path, "fast", tiny(), progress=False, members=2, folds=2)
    (tmp_path / "jobs" / "member1-fold1" / "job.json").unlink()  # as if interrupted during that one
    calls = []
    real = execute_module.train_job
    monkeypatch.setattr(execute_module, "train_job", lambda job, *a, **k: calls.append(job.name) or real(job, *a, **k))
    metrics = train_run(digits, tmp_path, "fast", tiny(), progress=False, members=2, folds=2)
    assert calls == ["member1-fold1"]
    assert metrics["estimate"] == "out-of-fold" and metrics["rows_scored"] == 300


@pytest.mark.parametrize("schedule", ["onecycle", "plateau"])
def test_no_model_sees_the_rows_it_is_scored_on(digits, tmp_path, monkeypatch, schedule):
    """No member trains on its fold's scored rows; with the plateau schedule, its decisions are not taken on them
    either."""
    seen = []
    real_fit = train_module.fit

    def spy(method, cfg, train, val, *args, **kwargs):
        seen.append(({r.tobytes() for r in train.images}, {r.tobytes() for r in val.images}))
        return real_fit(method, cfg, train, val, *args, **kwargs)

    monkeypatch.setattr(train_module, "fit", spy)
    train_run(digits, tmp_path, "fast", tiny(schedule=schedule), progress=False, members=1, folds=3)
    folds = split_indices(digits.labels, 3, 0.1, tiny().seed)
    assert len(seen) == 3
    for (train_rows, monitor_rows), (_, held_out) in zip(seen, folds, strict=True):
        scored = {digits.images[i].tobytes() for i in held_out}
        assert not train_rows & scored
        if schedule == "plateau":  # the schedule's decisions come from the member's own training part
            assert not monitor_rows & scored


@pytest.mark.slow
def test_cli_ensemble_run_and_predict_with_tta(small_data_dir, tmp_path, capsys):
    """run --members 2 --folds 2 --tta scores all 200 rows out of fold and writes 4 jobs; predict --tta with the
    run writes its own submission."""
    out = tmp_path / "ens"
    code = main(["run", "--data-dir", str(small_data_dir), "--out", str(out), "--preset", "fast", "--members", "2",
                 "--folds", "2", *TINY_FLAGS, "--tta", "--quiet"])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["estimate"] == "out-of-fold" and metrics["rows_scored"] == 200
    for key in ("single_model_accuracy", "ensemble_accuracy", "ensemble_accuracy_tta"):
        assert 0 <= metrics[key] <= 1
    assert len(list((out / "jobs").iterdir())) == 4
    for name in ("confusion_matrix.png", "errors.png", "submission.csv", "run.json"):
        assert (out / name).is_file(), name
    sub = tmp_path / "sub.csv"
    assert main(["predict", "--model", str(out), "--test", str(small_data_dir / "test.csv"), "--out", str(sub),
                 "--tta"]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(sub), pd.read_csv(out / "submission.csv"))


def test_ensembles_and_tta_are_for_networks(tmp_path, capsys):
    """Members and test-time augmentation asked of a classic method exit 2 saying why, before anything is
    written."""
    assert main(["run", "--out", str(tmp_path / "a"), "--model", "knn", "--members", "3"]) == 2
    assert "not one" in capsys.readouterr().err
    assert main(["run", "--out", str(tmp_path / "b"), "--model", "svm", "--tta"]) == 2
    assert "networks" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_ensemble_preset_is_the_same_on_any_hardware(device, monkeypatch):
    """--preset ensemble is 8 wide networks x 5 folds with TTA, on a CPU as on a GPU; flags win over the preset,
    and an explicit 0 members or another model is refused."""
    from digit_recognizer.cli import UsageError, apply_preset, build_parser, config_from_args

    monkeypatch.setattr(train_module, "resolve_device", lambda name: torch.device(device))
    args = build_parser().parse_args(["run", "--preset", "ensemble"])
    apply_preset(args)
    assert (args.model, args.members, args.folds, args.tta) == ("wide", 8, 5, True)
    assert config_from_args(args).label_smoothing == 0.1

    args = build_parser().parse_args(["train", "--preset", "ensemble", "--members", "2", "--label-smoothing", "0.2"])
    apply_preset(args)
    assert (args.members, args.folds, config_from_args(args).label_smoothing) == (2, 5, 0.2)  # flags win
    with pytest.raises(UsageError, match="at least 1"):  # an explicit 0 is refused, not hidden by the preset
        apply_preset(build_parser().parse_args(["run", "--preset", "ensemble", "--members", "0"]))
    with pytest.raises(UsageError, match="trains model"):
        apply_preset(build_parser().parse_args(["run", "--preset", "ensemble", "--model", "svm"]))
