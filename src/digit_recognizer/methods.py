"""Every method behind scikit-learn's interface (``fit`` / ``predict`` / ``predict_proba``), by name, and the
files a fitted one is kept in.

The classic methods are scikit-learn pipelines; the networks are :class:`NetClassifier`, a thin wrapper over
the project's one training loop (:func:`digit_recognizer.train.fit`). Their names and descriptions are the
records of :data:`digit_recognizer.config.METHODS`.

A fitted model is saved without anything that can execute code when loaded: a network as safetensors, a
scikit-learn pipeline with skops. skops would trust every scikit-learn estimator and every NumPy function by
default, and some of those evaluate strings or call other functions; :func:`load_estimator` therefore reads
the file's schema first and refuses any type outside :func:`trusted_types`, the exact types this project's own
methods save.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.decomposition import PCA
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.svm import SVC
from sklearn.tree import DecisionTreeClassifier
from sklearn.tree._tree import Tree
from sklearn.utils.validation import check_array, check_is_fitted

from . import train as training_loop  # by module: its fit and resolve_device are looked up when called
from .config import TrainConfig, check_method, method_config
from .data import N_CLASSES, N_PIXELS, Digits, split
from .evaluate import network_proba
from .files import atomic_path
from .models import build_network, load_weights, save_weights


class NetClassifier(ClassifierMixin, BaseEstimator):
    """A network trained by the project's training loop, as a scikit-learn classifier.

    ``fit(X, y)`` holds out ``config.val_fraction`` of ``X`` (stratified) to drive the learning-rate
    schedule, so that a score measured on other data stays honest. Passing ``X_val, y_val`` uses those
    instead, as the seed kernel does.
    """

    def __init__(self, method: str = "cnn", config: TrainConfig | None = None, device: str = "auto",
                 progress: bool = False, label: str = "", tta: bool = False) -> None:
        self.method = method
        self.config = config
        self.device = device
        self.progress = progress
        self.label = label
        self.tta = tta

    def fit(self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray | None = None, y_val: np.ndarray | None = None,
            checkpoint: object | None = None) -> NetClassifier:
        cfg = self._config()
        cfg.validate()
        X, y = _images(X, "X", min_rows=N_CLASSES), _digits(y, len(X), "y")
        if X_val is None:
            train, val = split(Digits(X, y), cfg.val_fraction, cfg.seed)
        else:
            train, val = Digits(X, y), Digits(_images(X_val, "X_val"), _digits(y_val, len(X_val), "y_val"))
        device = training_loop.resolve_device(self.device)
        self.network_, self.history_ = training_loop.fit(self.method, cfg, train, val, device, self.progress,
                                                         self.label, checkpoint)
        self.classes_ = np.arange(N_CLASSES)
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "network_")
        device = next(self.network_.parameters()).device
        return network_proba(self.network_, _images(X, "X"), device=device, tta=self.tta,
                             precision=self._config().precision)  # the arithmetic it trained in

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.predict_proba(X).argmax(1)

    def _config(self) -> TrainConfig:
        """The settings it trains (and trained) with: its own, or its method's recipe."""
        return self.config or method_config(self.method)


def _images(X: object, name: str, min_rows: int = 1) -> np.ndarray:
    """``X`` as the networks take it, uint8 ``(n, 784)``; refuses (ValueError naming it) anything else: not a 2-D
    array of numbers, fewer than ``min_rows`` rows, NaN or infinite values, another number of columns, pixels
    that are not whole numbers 0-255 (a float image scaled to [0, 1] would otherwise be read as nearly black)."""
    X = check_array(X, dtype="numeric", ensure_min_samples=min_rows, input_name=name)
    if X.shape[1] != N_PIXELS:
        raise ValueError(f"{name}: expected {N_PIXELS} pixel columns (28x28 images), got {X.shape[1]}")
    if X.size and (X.min() < 0 or X.max() > 255 or (X.dtype.kind == "f" and not np.array_equal(X, np.round(X)))):
        raise ValueError(f"{name}: pixels must be whole numbers 0-255")
    return np.ascontiguousarray(X, dtype=np.uint8)


def _digits(y: object, rows: int, name: str) -> np.ndarray:
    """``y`` as labels: one whole number 0-9 per image; refuses (ValueError naming it) anything else."""
    y = check_array(y, ensure_2d=False, dtype="numeric", input_name=name)
    if y.ndim != 1 or len(y) != rows:
        raise ValueError(f"{name}: expected one label per image ({rows}), got shape {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= N_CLASSES or not np.array_equal(y, np.round(y))):
        raise ValueError(f"{name}: labels must be the digits 0-9")
    return y.astype(np.int64)


def _scale(X: np.ndarray) -> np.ndarray:
    return np.asarray(X, dtype=np.float32) / 255.0


def _scaler() -> FunctionTransformer:
    return FunctionTransformer(_scale)


# The classic methods' pipelines, each named by its record's ``builder`` (config.METHODS).

def logreg() -> Pipeline:
    return make_pipeline(_scaler(), LogisticRegression(C=0.1, max_iter=300))


def knn() -> Pipeline:
    return make_pipeline(_scaler(), PCA(30, random_state=0), KNeighborsClassifier(6, weights="distance"))


def svm() -> Pipeline:
    return make_pipeline(_scaler(), PCA(50, random_state=0), SVC(C=10, gamma="scale"))


def forest() -> RandomForestClassifier:
    return RandomForestClassifier(300, n_jobs=-1, random_state=0)


def make_estimator(name: str, config: TrainConfig | None = None, device: str = "auto", progress: bool = False,
                   label: str = "") -> BaseEstimator:
    """A fresh, unfitted estimator for a method name; ``config`` sets a network's training settings
    (default: the method's recipe, :func:`~digit_recognizer.config.method_config`)."""
    record = check_method(name)  # also refuses an unknown name, listing the known ones
    if record.network:
        return NetClassifier(name, config, device, progress, label)
    return globals()[record.builder]()


def estimator_proba(estimator: BaseEstimator, X: np.ndarray) -> np.ndarray:
    """Class probabilities ``(n, 10)``; a method without probabilities (SVC) gives one-hot votes."""
    if hasattr(estimator, "predict_proba"):  # False for a pipeline ending in SVC(probability=False)
        return np.asarray(estimator.predict_proba(X), dtype=np.float32)
    onehot = np.zeros((len(X), N_CLASSES), dtype=np.float32)
    onehot[np.arange(len(X)), estimator.predict(X)] = 1.0
    return onehot


def save_estimator(estimator: BaseEstimator, path: str | Path) -> None:
    """Write a fitted model's file: a network's weights (safetensors) or a pipeline (skops), atomically."""
    if isinstance(estimator, NetClassifier):
        save_weights(estimator.network_, path)
        return
    import skops.io

    with atomic_path(path) as tmp:
        skops.io.dump(estimator, tmp)


def load_estimator(method: str, cfg: TrainConfig, path: str | Path, device: str = "cpu",
                   tta: bool = False) -> BaseEstimator:
    """Load what :func:`save_estimator` wrote for ``method``; raises ValueError naming the file and the fault."""
    path = Path(path)
    if check_method(method).network:
        wrapper = NetClassifier(method, cfg, device=device, tta=tta)
        wrapper.network_ = load_weights(build_network(method, cfg), path).to(training_loop.resolve_device(device))
        wrapper.classes_ = np.arange(N_CLASSES)
        return wrapper
    if tta:
        raise ValueError("test-time augmentation applies to networks, not to scikit-learn models")
    return _load_skops(path)


def trusted_types() -> set[str]:
    """Every type a saved classic method may contain: its estimators, plain containers, NumPy arrays of numbers,
    and this module's pixel scaling. Nothing callable beyond those."""
    classes = [Pipeline, FunctionTransformer, LogisticRegression, PCA, KNeighborsClassifier, SVC,
               RandomForestClassifier, DecisionTreeClassifier, Tree]
    names = {f"{c.__module__}.{c.__qualname__}" for c in classes}
    names |= {f"builtins.{t}" for t in ("dict", "list", "tuple", "str", "int", "float", "bool", "NoneType")}
    names |= {f"numpy.{t}" for t in ("ndarray", "float64", "float32", "int64", "int32", "intp", "uint8")}
    return names | {f"{__name__}._scale"}


# The kinds of node skops writes for the types above; others (methods, reduce calls, operators) are refused.
_TRUSTED_NODES = {"DictNode", "ListNode", "TupleNode", "JsonNode", "TypeNode", "NdArrayNode", "ObjectNode",
                  "FunctionNode", "TreeNode"}


def _load_skops(path: Path) -> BaseEstimator:
    import skops.io

    try:
        with zipfile.ZipFile(path) as archive:
            schema = json.loads(archive.read("schema.json"))
        found = _schema_types(schema)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, RecursionError) as err:
        raise ValueError(f"{path}: not a readable skops file ({err})") from None
    trusted = trusted_types()
    refused = sorted({name for name, node in found
                      if name not in trusted or node not in _TRUSTED_NODES
                      or (node == "FunctionNode" and name != f"{__name__}._scale")})
    if refused:
        raise ValueError(f"{path}: refusing to load types this project never saves: {', '.join(refused[:5])}")
    try:
        estimator = skops.io.load(path, trusted=sorted({name for name, _ in found}))
    except Exception as err:  # skops raises many kinds on a damaged file; none may escape as a traceback
        raise ValueError(f"{path}: cannot load ({type(err).__name__}: {str(err)[:200]})") from None
    _check_fitted_for_digits(estimator, path)
    return estimator


def _schema_types(node: object) -> set[tuple[str, str]]:
    """``(module.class, node kind)`` of every object a skops schema describes."""
    found: set[tuple[str, str]] = set()
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "__class__" in item:
                found.add((f"{item.get('__module__')}.{item['__class__']}", str(item.get("__loader__"))))
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def _check_fitted_for_digits(estimator: BaseEstimator, path: Path) -> None:
    """A model of the right types can still be fitted to other data: it must take 784 pixels, know the ten
    digits, and answer a blank image."""
    features = getattr(estimator, "n_features_in_", None)
    if features != N_PIXELS:
        raise ValueError(f"{path}: the model takes {features} features, not the {N_PIXELS} pixels of a digit")
    if not np.array_equal(getattr(estimator, "classes_", None), np.arange(N_CLASSES)):
        raise ValueError(f"{path}: the model's classes are not the digits 0-9")
    try:
        proba = estimator_proba(estimator, np.zeros((1, N_PIXELS), dtype=np.uint8))
    except Exception as err:  # whatever a damaged model raises, it is the file's fault
        raise ValueError(f"{path}: the model fails on a blank image ({type(err).__name__}: {err})") from None
    if proba.shape != (1, N_CLASSES):
        raise ValueError(f"{path}: the model answers {proba.shape[1]} classes, not {N_CLASSES}")


class EnsembleModel:
    """Fitted models predicting together by the mean of their probabilities."""

    def __init__(self, members: list[BaseEstimator]) -> None:
        self.members = members

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return np.mean([estimator_proba(member, X) for member in self.members], axis=0)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.predict_proba(X).argmax(1)
