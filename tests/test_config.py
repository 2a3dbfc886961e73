"""The torch-free configuration module agrees with the registries it names, and stays torch-free."""

from __future__ import annotations

import subprocess
import sys

import pytest

from digit_recognizer.config import (
    ARCH_NAMES,
    METHOD_NAMES,
    NETWORK_PRESETS,
    OPTIMIZER_NAMES,
    TrainConfig,
    default_config,
    preset,
)


def test_names_match_the_registries():
    from digit_recognizer.methods import METHODS
    from digit_recognizer.models import ARCHITECTURES
    from digit_recognizer.train import OPTIMIZERS

    assert tuple(ARCHITECTURES) == ARCH_NAMES
    assert tuple(OPTIMIZERS) == OPTIMIZER_NAMES
    assert tuple(METHODS) == METHOD_NAMES


def test_presets_are_selectable_and_valid():
    for name in ("seed", "fast", "mlp"):
        preset(name).validate()
    assert preset("seed") == TrainConfig()  # the seed recipe is the unchanged default
    assert default_config("fast") == preset(NETWORK_PRESETS["fast"])
    assert default_config("svm") is None
    with pytest.raises(ValueError, match="unknown preset"):
        preset("turbo")


def test_light_modules_do_not_import_torch_or_sklearn():
    code = ("import sys, digit_recognizer, digit_recognizer.cli, digit_recognizer.serve; "
            "heavy = [m for m in ('torch', 'sklearn') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
