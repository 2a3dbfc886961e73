"""digit-recognizer: Kaggle's Digit Recognizer (MNIST) end to end.

>>> from digit_recognizer import TrainConfig, load_embedded, train_run
>>> train, test = load_embedded()
>>> metrics = train_run(train, "run", "cnn", TrainConfig(epochs=2))  # doctest: +SKIP

The names below are imported on first use (PEP 562), so that importing the package, or a light module of
it, does not load torch and scikit-learn.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_WHERE = {
    "TrainConfig": "config", "METHODS": "config", "PRESETS": "config", "method_config": "config", "preset": "config",
    "DataError": "data", "Digits": "data", "load_embedded": "data", "read_test": "data", "read_train": "data",
    "NetClassifier": "methods", "estimator_proba": "methods", "make_estimator": "methods",
    "build_network": "models",
    "compare": "runs", "run": "runs", "train_run": "runs",
    "load_model": "loading",
    "write_submission": "submission",
    "fit": "train",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
