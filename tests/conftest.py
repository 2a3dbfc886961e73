"""Fixtures and helpers shared by the test files, and the markers of tests that files owned elsewhere cannot
mark themselves."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from digit_recognizer.config import TrainConfig, method_config
from digit_recognizer.data import Digits, load_embedded, read_train, write_csv
from digit_recognizer.runs import train_run

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "digit-recognizer"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# A network trained in a second or two: the fast preset shrunk to 4-8-8 filters and 16 dense units, one epoch,
# in float32 on every CPU (the preset's bfloat16 where the CPU has it would make results differ between machines),
# SGD for every weight and the whole 28x28 image (Muon and the crop have tests of their own; a change of the preset
# must not move the others).
TINY_FLAGS = ["--epochs", "1", "--filters", "4,8,8", "--dense", "16", "--precision", "fp32", "--muon-lr", "0",
              "--crop", "28"]

# The recipes the tests that read a trained model's accuracy were measured with, spelled out rather than read
# from config.METHODS: a change of a recipe must not move those tests. On the CPU, so that the machine does not.
SEED_RECIPE = {"filters": (32, 64, 128), "kernels": (5, 3, 3), "dense": 256, "dropout": (0.25, 0.25, 0.25, 0.5),
               "pool_first": False, "crop": 28,
               "epochs": 30, "batch_size": 86, "optimizer": "rmsprop", "lr": 1e-3, "weight_decay": 0.0,
               "label_smoothing": 0.0, "ema": 0.0, "schedule": "plateau", "lr_factor": 0.5, "lr_patience": 3,
               "min_lr": 1e-5, "precision": "fp32", "init": "default", "bn_momentum": 0.1, "bn_scale": True,
               "bn_bias_lr": 1.0, "muon_lr": 0.0, "whiten": False, "val_fraction": 0.1, "seed": 2, "augment": True,
               "rotation": 10.0, "zoom": 0.1, "shift": 0.1, "elastic": 0.0, "device": "cpu"}
FAST_RECIPE = {**SEED_RECIPE, "filters": (16, 32, 64), "dense": 128, "epochs": 12, "batch_size": 128,
               "optimizer": "sgd", "lr": 0.1, "weight_decay": 5e-4, "label_smoothing": 0.1, "schedule": "onecycle"}


def pinned(recipe: dict, **changes: object) -> TrainConfig:
    """Every training setting fixed here: ``recipe`` (SEED_RECIPE or FAST_RECIPE) with ``changes``."""
    settings = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(recipe) == settings, f"pin the new settings too: {sorted(settings - set(recipe))}"
    assert set(changes) <= settings, f"not training settings: {sorted(set(changes) - settings)}"
    return TrainConfig(**{**recipe, **changes})


def pinned_file(folder: Path, recipe: dict, **changes: object) -> Path:
    """:func:`pinned` settings as a JSON file for ``--config``: every setting given, none left to a recipe."""
    path = folder / "pinned.json"
    path.write_text(json.dumps(pinned(recipe, **changes).to_dict()))
    return path


def tiny(epochs: int = 1, **changes: object) -> TrainConfig:
    """The fast network's recipe shrunk as TINY_FLAGS shrink it, for tests that need a trained network, not a
    good one."""
    return dataclasses.replace(method_config("fast"), **{"filters": (4, 8, 8), "dense": 16, "epochs": epochs,
                                                        "precision": "fp32", "muon_lr": 0.0, "crop": 28, **changes})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark what files owned elsewhere do not mark themselves: the browser tests (they need Chromium), and the
    tests of the served network, which is trained once per session for about a minute, as slow."""
    for item in items:
        if item.path.name == "test_browser.py":
            item.add_marker(pytest.mark.browser)
        if "served_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def embedded() -> tuple[Digits, Digits]:
    """The embedded MNIST sample: 4,000 labelled and 1,000 unlabelled digits."""
    return load_embedded()


@pytest.fixture(scope="session")
def small_data_dir(tmp_path_factory, embedded) -> Path:
    """A Kaggle-style folder with 200 labelled and 30 unlabelled real digits."""
    train, test = embedded
    folder = tmp_path_factory.mktemp("small")
    write_csv(Digits(train.images[:200], train.labels[:200]), folder / "train.csv")
    write_csv(Digits(test.images[:30]), folder / "test.csv")
    return folder


@pytest.fixture(scope="session")
def served_run(tmp_path_factory, embedded) -> Path:
    """A fast-preset network for the serving tests: trained on 20,000 competition rows where they are here
    (good enough to read printed digits), else on the embedded digits (good enough for the API tests)."""
    out = tmp_path_factory.mktemp("served")
    if has_shared_data():
        full = read_train(SHARED_DATA / "train.csv.gz")
        train, epochs = Digits(full.images[:20_000], full.labels[:20_000]), 6
    else:
        train, epochs = embedded[0], 10
    # Settings of its own, every one pinned, so that a change of the preset's recipe does not move the serving
    # tests: with label smoothing, this short training reads DejaVu's "1" (a foot that MNIST ones lack) as a 2.
    train_run(train, out, "fast", pinned(FAST_RECIPE, epochs=epochs, label_smoothing=0.0), progress=False)
    return out


def has_shared_data() -> bool:
    return (SHARED_DATA / "train.csv.gz").is_file()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The competition's files, where this checkout has them beside it; the tests that need them skip otherwise."""
    if not has_shared_data():
        pytest.skip(f"competition data not found at {SHARED_DATA}")
    return SHARED_DATA


def asymmetric_digit() -> np.ndarray:
    """A 28x28 uint8 image with all its ink in the left half: a flip would move it to the right."""
    image = np.zeros((28, 28), dtype=np.uint8)
    image[6:22, 5:11] = 255
    return image


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (temporary files included) by relative path, with its bytes: what a refused
    command must leave exactly as it was."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(capsys: pytest.CaptureFixture, *fragments: str) -> str:
    """stderr, checked to be exactly one error line of the command line holding every fragment."""
    err = capsys.readouterr().err
    assert err.startswith("digit-recognizer: error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err



# Ways a finished run of 2 folds, read back as the input of another command (the label audit, distillation, a
# second stage's pseudo-labels), can be damaged: the file the one-line error names (relative to the run; "" for
# the run itself), a fragment of the error, and the damage done to a copy of the run.
def _garbage(path: Path) -> None:
    path.write_bytes(b"PK\x03\x04garbage")


def _kind_compare(run: Path) -> None:
    (run / "run.json").write_text(json.dumps({**json.loads((run / "run.json").read_text()), "kind": "compare"}))


def change_weights(path: Path, change) -> None:
    """The weight matrices and filters (not the BatchNorm statistics) of a network's file, changed by ``change``."""
    from safetensors.torch import load_file, save_file

    state = load_file(path)
    save_file({name: change(t) if t.ndim >= 2 else t for name, t in state.items()}, path)


DAMAGED_RUNS = {
    "no run.json": ("run.json", "not found", lambda run: (run / "run.json").unlink()),
    "unfinished": ("", "unfinished", lambda run: (run / "jobs/member0-fold1/job.json").unlink()),
    "a comparison": ("run.json", "a comparison", _kind_compare),
    "heldout garbage": ("jobs/member0-fold1/heldout.npz", "cannot read",
                        lambda run: _garbage(run / "jobs/member0-fold1/heldout.npz")),
    "weights garbage": ("jobs/member0-fold1/model.safetensors", "not a readable safetensors",
                        lambda run: _garbage(run / "jobs/member0-fold1/model.safetensors")),
    "weights not numbers": ("jobs/member0-fold1/model.safetensors", "not finite", lambda run: change_weights(
        run / "jobs/member0-fold1/model.safetensors", lambda t: t.fill_(float("nan")))),
    "weights that overflow": ("jobs/member0-fold1", "not finite", lambda run: change_weights(
        run / "jobs/member0-fold1/model.safetensors", lambda t: t * 1e30)),
    "config garbage": ("jobs/member0-fold1/config.json", "not valid JSON",
                       lambda run: (run / "jobs/member0-fold1/config.json").write_text("{")),
}
