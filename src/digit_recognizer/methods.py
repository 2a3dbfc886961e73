"""Every method behind scikit-learn's interface (``fit`` / ``predict`` / ``predict_proba``), by name.

The classic methods are scikit-learn pipelines; the networks are :class:`NetClassifier`, a thin wrapper over
the project's one training loop (:func:`digit_recognizer.train.fit`). A fitted model of either kind is saved
into a run directory and loaded back by :func:`save_model` / :func:`load_model`, without executing code:
networks as safetensors, scikit-learn pipelines with skops (whose loader refuses types it was not told to
trust).

The classic settings below were chosen by 3-fold cross-validation on the competition's training data
(``benchmarks/tune_classic.py``; the grids and scores are in ``docs/results.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.decomposition import PCA
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.svm import SVC

from .config import TrainConfig, default_config
from .data import Digits, split
from .ensemble import EnsembleModel, is_ensemble
from .evaluate import predict_proba
from .files import atomic_path, write_json
from .models import CONFIG_FILE, WEIGHTS_FILE, load_network, save_network
from .train import fit, resolve_device

SKOPS_FILE = "model.skops"


class NetClassifier(ClassifierMixin, BaseEstimator):
    """A network trained by the project's training loop, as a scikit-learn classifier.

    ``fit(X, y)`` holds out ``config.val_fraction`` of ``X`` (stratified) to drive the learning-rate
    schedule, so that a score measured on other data stays honest. Passing ``X_val, y_val`` uses those
    instead, as the seed kernel does.
    """

    def __init__(self, config: TrainConfig | None = None, progress: bool = False, tta: bool = False) -> None:
        self.config = config
        self.progress = progress
        self.tta = tta

    def fit(self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray | None = None,
            y_val: np.ndarray | None = None) -> NetClassifier:
        cfg = self.config or TrainConfig()
        if X_val is None:
            train, val = split(Digits(X, y), cfg.val_fraction, cfg.seed)
        else:
            train, val = Digits(X, y), Digits(X_val, y_val)
        self.network_, self.history_ = fit(cfg, train, val, progress=self.progress)
        self.classes_ = np.arange(10)
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        device = next(self.network_.parameters()).device
        return predict_proba(self.network_, X, device=device, tta=self.tta)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.predict_proba(X).argmax(1)


def _scale(X: np.ndarray) -> np.ndarray:
    return np.asarray(X, dtype=np.float32) / 255.0


def _scaler() -> FunctionTransformer:
    return FunctionTransformer(_scale)


# name -> (description, factory taking the network config (None for a classic method) and progress)
METHODS: dict[str, tuple[str, Callable[[TrainConfig | None, bool], BaseEstimator]]] = {
    "logreg": ("multinomial logistic regression on pixels / 255",
               lambda cfg, progress: make_pipeline(_scaler(), LogisticRegression(C=0.1, max_iter=300))),
    "knn": ("k-nearest neighbours (k=6, distance-weighted) on 30 PCA components",
            lambda cfg, progress: make_pipeline(_scaler(), PCA(30, random_state=0),
                                                KNeighborsClassifier(6, weights="distance"))),
    "svm": ("SVM with an RBF kernel on 50 PCA components",
            lambda cfg, progress: make_pipeline(_scaler(), PCA(50, random_state=0),
                                                SVC(C=10, gamma="scale"))),
    "forest": ("random forest, 300 trees",
               lambda cfg, progress: RandomForestClassifier(300, n_jobs=-1, random_state=0)),
    "mlp": ("fully connected network 784-512-256-10, trained by the project's loop",
            lambda cfg, progress: NetClassifier(cfg, progress)),
    "fast": ("small BatchNorm CNN 16-32-64, one-cycle schedule (preset 'fast')",
             lambda cfg, progress: NetClassifier(cfg, progress)),
    "cnn": ("the seed kernel's CNN and recipe (preset 'seed')",
            lambda cfg, progress: NetClassifier(cfg, progress)),
}


def make_estimator(name: str, config: TrainConfig | None = None, progress: bool = False) -> BaseEstimator:
    """A fresh, unfitted estimator for a method name; ``config`` overrides a network's training settings
    (default: the method's preset, :func:`~digit_recognizer.config.default_config`)."""
    config = config or default_config(name)  # also refuses an unknown name, listing the known ones
    return METHODS[name][1](config, progress)


def estimator_proba(estimator: BaseEstimator, X: np.ndarray) -> np.ndarray:
    """Class probabilities ``(n, 10)``; a method without probabilities (SVC) gives one-hot votes."""
    if hasattr(estimator, "predict_proba"):  # False for a pipeline ending in SVC(probability=False)
        return np.asarray(estimator.predict_proba(X), dtype=np.float32)
    onehot = np.zeros((len(X), 10), dtype=np.float32)
    onehot[np.arange(len(X)), estimator.predict(X)] = 1.0
    return onehot


def save_model(estimator: BaseEstimator, run_dir: str | Path, method: str) -> None:
    """Save a fitted estimator of any method into ``run_dir``."""
    run_dir = Path(run_dir)
    if isinstance(estimator, NetClassifier):
        cfg = estimator.config or TrainConfig()
        save_network(estimator.network_, run_dir,
                     {"method": method, "arch": cfg.arch, "arch_options": cfg.arch_options(), "train": cfg.to_dict()})
        return
    import skops.io

    with atomic_path(run_dir / SKOPS_FILE) as tmp:
        skops.io.dump(estimator, tmp)
    write_json({"method": method, "description": METHODS[method][0]}, run_dir / CONFIG_FILE)


def load_model(run_dir: str | Path, device: str = "auto", tta: bool = False) -> BaseEstimator:
    """Load what :func:`save_model` (or an ensemble run) wrote; the result has ``predict`` and ``predict_proba``.

    ``tta`` averages a network's probabilities over shifted copies of each image; classic methods refuse it.
    """
    run_dir = Path(run_dir)
    if is_ensemble(run_dir):
        return EnsembleModel(run_dir, device=device, tta=tta)
    if (run_dir / WEIGHTS_FILE).is_file() or not (run_dir / SKOPS_FILE).is_file():
        network, config = load_network(run_dir)
        wrapper = NetClassifier(TrainConfig(**_tuples(config.get("train", {}))), tta=tta)
        wrapper.network_ = network.to(resolve_device(device))
        wrapper.classes_ = np.arange(10)
        return wrapper
    if tta:
        raise ValueError("test-time augmentation applies to networks, not to scikit-learn models")
    import skops.io

    untrusted = skops.io.get_untrusted_types(file=run_dir / SKOPS_FILE)
    ours = f"{__name__}._scale"
    unexpected = [t for t in untrusted if not (t.startswith(("sklearn.", "numpy.")) or t == ours)]
    if unexpected:
        raise ValueError(f"{run_dir / SKOPS_FILE}: refusing to load unexpected types {unexpected}")
    return skops.io.load(run_dir / SKOPS_FILE, trusted=untrusted)


def _tuples(values: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}

