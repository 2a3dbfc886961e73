"""Model files and directories are input from outside: anything but what this project saves is refused at load
time, with exit code 2 and one line naming the file and the fault, and nothing in them is executed."""

from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest
import skops.io
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from digit_recognizer.cli import main
from digit_recognizer.config import method_config
from digit_recognizer.data import Digits, write_csv
from digit_recognizer.runs import train_run


@pytest.fixture(scope="module")
def rows(embedded) -> Digits:
    return Digits(embedded[0].images[:300], embedded[0].labels[:300])


@pytest.fixture(scope="module")
def test_csv(tmp_path_factory, embedded):
    path = tmp_path_factory.mktemp("test") / "test.csv"
    write_csv(Digits(embedded[1].images[:20]), path)
    return path


@pytest.fixture(scope="module")
def net_run(tmp_path_factory, rows):
    cfg = method_config("fast")
    cfg.filters, cfg.dense, cfg.epochs = (4, 8, 8), 16, 1
    out = tmp_path_factory.mktemp("net") / "run"
    train_run(rows, out, "fast", cfg, progress=False)
    return out


@pytest.fixture(scope="module")
def knn_run(tmp_path_factory, rows):
    out = tmp_path_factory.mktemp("knn") / "run"
    train_run(rows, out, "knn", progress=False)
    return out


def spoiled(source, tmp_path, name, content: bytes | str | None = None):
    """A copy of a run directory with one file replaced (or removed when ``content`` is None)."""
    target = tmp_path / "spoiled"
    shutil.copytree(source, target)
    if content is None:
        (target / name).unlink()
    else:
        (target / name).write_bytes(content.encode() if isinstance(content, str) else content)
    return target


def refused(args, capsys, *fragments):
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err
    return err


def predict(model, test_csv, tmp_path):
    return ["predict", "--model", str(model), "--test", str(test_csv), "--out", str(tmp_path / "sub.csv")]


def test_a_hostile_skops_pipeline_is_refused_and_nothing_runs(knn_run, test_csv, tmp_path, capsys, monkeypatch):
    # A pipeline whose first step calls a NumPy function that writes files. skops trusts NumPy functions by
    # default, and the old rule (anything under numpy. or sklearn.) did too.
    evil = FunctionTransformer(func=np.savetxt, kw_args={"fmt": "%d"})
    pipeline = make_pipeline(evil, LogisticRegression(max_iter=20))
    x, y = np.random.default_rng(0).random((30, 784)), np.arange(30) % 10
    evil.fit(x)  # each step fitted on its own: fitting the pipeline would call the function
    pipeline[-1].fit(x, y)
    target = spoiled(knn_run, tmp_path, "model.skops", b"")
    skops.io.dump(pipeline, target / "model.skops")
    assert all(t.startswith(("numpy.", "sklearn.")) for t in skops.io.get_untrusted_types(file=target / "model.skops"))

    loads = []
    monkeypatch.setattr(skops.io, "load", lambda *a, **k: loads.append(a))
    refused(predict(target, test_csv, tmp_path), capsys, "model.skops", "numpy.savetxt")
    assert loads == []  # refused from the schema alone: skops never built an object from the file
    assert not (tmp_path / "sub.csv").exists()
    refused(["serve", "--model", str(target), "--port", "0"], capsys, "numpy.savetxt")


def test_a_scikit_learn_model_for_other_features_is_refused(knn_run, test_csv, tmp_path, capsys):
    other = LogisticRegression(max_iter=50).fit(np.random.default_rng(0).random((40, 10)), np.arange(40) % 10)
    target = spoiled(knn_run, tmp_path, "model.skops", b"")
    skops.io.dump(other, target / "model.skops")
    (target / "config.json").write_text(json.dumps({"method": "logreg"}))
    refused(predict(target, test_csv, tmp_path), capsys, "10 features")
    refused(["serve", "--model", str(target), "--port", "0"], capsys, "10 features")


@pytest.mark.parametrize("content, fragment", [
    ("not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"train": {}}', "'method' must be a string"),
    ('{"method": "fast", "train": {}, "arch": "seed"}', "unknown key 'arch'"),
    ('{"method": "fast", "train": {"epochs": "many"}}', "epochs must be a whole number"),
    ('{"method": "fast", "train": {"filters": [4, 8]}}', "filters takes 3 values"),
    ('{"method": "resnet", "train": {}}', "unknown model 'resnet'"),
    ('{"method": "fast", "train": []}', "expected a table of settings"),
])
def test_a_bad_config_json_is_refused(net_run, test_csv, tmp_path, capsys, content, fragment):
    target = spoiled(net_run, tmp_path, "config.json", content)
    refused(predict(target, test_csv, tmp_path), capsys, "config.json", fragment)


def test_a_run_json_cannot_point_outside_the_run(tmp_path, test_csv, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text(json.dumps({"kind": "ensemble", "jobs": ["../../etc"]}))
    refused(predict(tmp_path / "run", test_csv, tmp_path), capsys, "run.json", "job names")


@pytest.mark.parametrize("case", ["truncated", "garbage", "empty", "torch pickle", "other network"])
def test_bad_weights_are_refused_without_unpickling(net_run, test_csv, tmp_path, capsys, case):
    weights = (net_run / "model.safetensors").read_bytes()
    marker = tmp_path / "unpickled"

    class Payload:  # unpickling it would create the marker file
        def __reduce__(self):
            return (open, (str(marker), "w"))

    content = {
        "truncated": weights[: len(weights) // 2],
        "garbage": bytes(range(256)) * 10,
        "empty": b"",
        "torch pickle": pickle.dumps({"features.0.weight": Payload()}),
        "other network": None,
    }[case]
    if case == "other network":
        target = spoiled(net_run, tmp_path, "config.json",
                         json.dumps({"method": "cnn", "train": {"filters": [4, 8, 8]}}))
        fragment = "do not fit the network"
    else:
        target = spoiled(net_run, tmp_path, "model.safetensors", content)
        fragment = "not a readable safetensors file"
    refused(predict(target, test_csv, tmp_path), capsys, "model.safetensors", fragment)
    refused(["export", "--model", str(target), "--onnx", str(tmp_path / "m.onnx")], capsys, fragment)
    assert not marker.exists() and not (tmp_path / "m.onnx").exists()


def test_a_missing_model_file_is_named(net_run, test_csv, tmp_path, capsys):
    target = spoiled(net_run, tmp_path, "model.safetensors")
    refused(predict(target, test_csv, tmp_path), capsys, "model.safetensors: not found")


@pytest.mark.parametrize("content", [b"", b"\x08\x01garbage", b"PK\x03\x04" + bytes(100)])
def test_a_broken_onnx_file_is_refused(content, test_csv, tmp_path, capsys):
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    refused(["predict", "--onnx", str(path), "--test", str(test_csv), "--out", str(tmp_path / "sub.csv")], capsys,
            "model.onnx")
    refused(["serve", "--onnx", str(path), "--port", "0"], capsys, "model.onnx")
    assert not (tmp_path / "sub.csv").exists()


def test_export_takes_a_single_network(knn_run, rows, tmp_path, capsys):
    refused(["export", "--model", str(knn_run), "--onnx", str(tmp_path / "k.onnx")], capsys, "scikit-learn model")
    cfg = method_config("fast")
    cfg.filters, cfg.dense, cfg.epochs = (4, 8, 8), 16, 1
    train_run(rows, tmp_path / "ens", "fast", cfg, progress=False, members=2)
    refused(["export", "--model", str(tmp_path / "ens"), "--onnx", str(tmp_path / "e.onnx")], capsys,
            "ensemble of 2")
    # One member's folder is a single network, and exports.
    assert main(["export", "--model", str(tmp_path / "ens" / "jobs" / "member0"),
                 "--onnx", str(tmp_path / "m.onnx")]) == 0
