"""The torch-free configuration module: its records agree with the registries they name, settings from outside
are checked by name, type and value, and the module stays torch-free."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from digit_recognizer.config import (
    METHODS,
    OPTIMIZER_NAMES,
    PRESETS,
    SHAPE_SETTINGS,
    TrainConfig,
    choose,
    method_config,
    preset,
)


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_record_builds_its_model(name):
    """One record per method is the only registry: its builder makes the model, and a network's shape settings
    and default search choices are settings of TrainConfig that its network takes."""
    import torch

    from digit_recognizer.methods import make_estimator
    from digit_recognizer.models import build_network

    record = METHODS[name]
    if record.network:
        assert set(record.shape) <= set(SHAPE_SETTINGS) and set(record.search) <= set(record.shape)
        network = build_network(name)
        assert type(network).__name__ == record.builder
        assert network(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
        for setting, choices in record.search.items():
            for choice in choices:  # every default choice builds and validates
                cfg = method_config(name)
                setattr(cfg, setting, choice)
                cfg.validate()
                build_network(name, cfg)
    else:
        assert not record.shape and not record.search
        assert hasattr(make_estimator(name), "fit")


@pytest.mark.parametrize("optimizer", OPTIMIZER_NAMES)
def test_every_optimizer_name_builds_an_optimizer(optimizer):
    """Each optimizer name a setting accepts builds a torch optimizer."""
    import torch

    from digit_recognizer.models import build_network
    from digit_recognizer.train import make_optimizer

    cfg = method_config("fast")
    cfg.optimizer = optimizer
    assert isinstance(make_optimizer(cfg, build_network("fast", cfg)), torch.optim.Optimizer)


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_names_a_method_with_valid_settings(name):
    """Each preset names a known method, at least one member and fold, and its method's recipe validates."""
    p = preset(name)
    assert p.method in METHODS and p.members >= 1 and p.folds >= 1
    method_config(p.method).validate()


def test_presets_and_recipes():
    """The seed recipe is TrainConfig's default, the presets pick their methods and ensemble sizes, each recipe
    is a fresh copy, and an unknown preset is refused."""
    assert method_config("cnn") == TrainConfig()  # the seed recipe is the unchanged default
    assert preset("seed").method == "cnn" and preset("fast").method == "fast"
    assert (preset("ensemble").method, preset("ensemble").members, preset("ensemble").folds) == ("wide", 8, 5)
    # the ensemble's member is the fast network at twice the width, trained the same way
    assert method_config("wide") == dataclasses.replace(method_config("fast"), filters=(32, 64, 128))
    assert method_config("fast") is not method_config("fast")  # fresh copies: changing one leaves the recipe
    with pytest.raises(ValueError, match="unknown preset"):
        preset("turbo")


def test_the_fast_preset_predicts_with_tta_unless_told_not_to():
    """--preset fast writes its submission with test-time augmentation; --no-tta turns it off, --tta turns it on
    for any network, and a model chosen without a preset has none unless asked."""
    assert choose("fast", None, None, None).tta and choose("ensemble", None, None, None).tta
    assert not choose("fast", None, None, None, tta=False).tta
    assert not choose("seed", None, None, None).tta and choose("seed", None, None, None, tta=True).tta
    assert not choose(None, "fast", None, None).tta
    with pytest.raises(ValueError, match="--tta applies to networks"):
        choose(None, "svm", None, None, tta=True)


@pytest.mark.parametrize("values, message", [
    ({"epochs": 1.5}, "epochs must be a whole number"),
    ({"filters": "abc"}, "filters must be a list"),
    ({"filters": [8, "x", 8]}, "filters must be a whole number"),
    ({"augment": "no"}, "augment must be true or false"),
    ({"lr": True}, "lr must be a number"),
    ({"device": 0}, "device must be a string"),
    ({"epoch": 3}, "unknown setting 'epoch'"),
])
def test_from_dict_refuses_wrong_names_and_types(values, message):
    """A setting from outside with an unknown name or the wrong type is refused, naming it."""
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict(values, "my.toml")


@pytest.mark.parametrize("values, message", [
    ({"kernels": (5, 4, 3)}, "odd sizes"),
    ({"dense": 0}, "dense must be"),
    ({"device": "mps"}, "device must be"),
    ({"device": "meta"}, "device must be"),
    ({"lr": float("inf")}, "lr must be a finite"),
    ({"lr": float("nan")}, "lr must be a finite"),
    ({"val_fraction": 0.0}, "val_fraction"),
    ({"seed": -1}, "seed"),
    ({"zoom": 1.5}, "zoom and shift"),
    ({"muon_lr": 0.05, "optimizer": "adamw"}, "muon_lr works with optimizer sgd"),
    ({"muon_lr": -1.0}, "muon_lr must be in"),
    ({"whiten": True, "filters": (15, 32, 64)}, "whiten needs an even"),
    ({"whiten": True, "filters": (32, 64, 128)}, "whiten needs an even"),
])
def test_validate_refuses_values_that_would_fail_later(values, message):
    """A setting whose value could not train is refused before any data is read, naming it."""
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict(values).validate()


def test_from_dict_converts_lists_and_ints():
    """Lists from a file become tuples and an int where a float is expected becomes a float."""
    cfg = TrainConfig.from_dict({"filters": [8, 16, 32], "lr": 1, "dropout": [0, 0.1, 0.1, 0.5]})
    assert cfg.filters == (8, 16, 32) and cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.dropout == (0.0, 0.1, 0.1, 0.5)
    cfg.validate()


def test_light_modules_do_not_import_torch_or_sklearn():
    """Importing the package, its command line and its server imports neither torch nor scikit-learn (start-up
    time)."""
    code = ("import sys, digit_recognizer, digit_recognizer.cli, digit_recognizer.serve; "
            "heavy = [m for m in ('torch', 'sklearn') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
