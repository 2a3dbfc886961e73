"""digit-recognizer: Kaggle's Digit Recognizer (MNIST) end to end.

>>> from digit_recognizer import TrainConfig, load_embedded, train_run
>>> train, test = load_embedded()
>>> metrics = train_run(train, "run", "cnn", TrainConfig(epochs=2))  # doctest: +SKIP
"""

from .data import DataError, Digits, load_embedded, read_test, read_train
from .methods import METHODS, NetClassifier, estimator_proba, load_model, make_estimator, save_model
from .models import build_network, load_network, save_network
from .pipeline import run, train_run
from .predict import write_submission
from .train import TrainConfig, fit

__version__ = "0.1.0"

__all__ = [
    "METHODS", "DataError", "Digits", "NetClassifier", "TrainConfig", "build_network", "estimator_proba", "fit",
    "load_embedded", "load_model", "load_network", "make_estimator", "read_test", "read_train", "run",
    "save_model", "save_network", "train_run", "write_submission",
]
