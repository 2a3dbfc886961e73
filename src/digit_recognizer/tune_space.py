"""A search's space: which training settings ``tune`` searches, over which ranges or choices.

The search space is one TOML table per setting (:func:`read_space`)::

    [lr]
    low = 1e-3
    high = 0.3
    log = true        # sample on a log scale

    [epochs]          # a whole-number setting samples whole numbers
    low = 4
    high = 12

    [batch_size]
    choices = [64, 128, 256]

    [filters]         # a list setting takes choices of lists
    choices = [[16, 32, 64], [32, 64, 128]]

    [label_smoothing] # an empty table: the model's default range for that setting
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .config import SHAPE_SETTINGS, TrainConfig, _typed, check_method
from .files import read_bounded

if TYPE_CHECKING:
    import optuna

MAX_SPACE_FILE = 1 << 20  # bytes; a space file is a few hundred
FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
NOT_SEARCHED = {"device": "it is the hardware, not a training setting",
                "seed": "it decides the folds every trial shares; set it with --seed"}


@dataclass(frozen=True)
class Param:
    """One searched setting: a range from ``low`` to ``high`` (on a log scale if ``log``), or ``choices``."""

    name: str
    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    choices: tuple | None = None

    def suggest(self, trial: optuna.Trial) -> object:
        if self.choices is None:
            suggest = trial.suggest_int if FIELD_TYPES[self.name] == "int" else trial.suggest_float
            return suggest(self.name, self.low, self.high, log=self.log)
        if isinstance(self.choices[0], tuple):  # Optuna's choices are plain values: a list goes by its label
            labels = {label(choice): choice for choice in self.choices}
            return labels[trial.suggest_categorical(self.name, list(labels))]
        return trial.suggest_categorical(self.name, list(self.choices))

    def distribution(self) -> optuna.distributions.BaseDistribution:
        """The distribution :meth:`suggest` records in the study: a trial read back must have this one."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.choices is not None:
            return CategoricalDistribution([label(c) if isinstance(c, tuple) else c for c in self.choices])
        kind = IntDistribution if FIELD_TYPES[self.name] == "int" else FloatDistribution
        return kind(self.low, self.high, log=self.log)

    def holds(self, value: object) -> bool:
        """Whether ``value``, as a study records it, is one that :meth:`suggest` can draw."""
        if self.choices is not None:
            return any(type(value) is type(choice) and value == choice for choice in self.distribution().choices)
        kind = int if FIELD_TYPES[self.name] == "int" else int | float
        return isinstance(value, kind) and not isinstance(value, bool) and self.low <= value <= self.high

    def extremes(self) -> list:
        """The values to check before a search: the bounds, or every choice."""
        return [self.low, self.high] if self.choices is None else list(self.choices)

    def to_dict(self) -> dict:
        if self.choices is not None:
            return {"choices": [list(c) if isinstance(c, tuple) else c for c in self.choices]}
        return {"low": self.low, "high": self.high, "log": self.log}

    def summary(self) -> str:
        if self.choices is not None:
            return f"{self.name} in {{{', '.join(label(c) for c in self.choices)}}}"
        return f"{self.name} {self.low:g}..{self.high:g}" + (" (log)" if self.log else "")


def default_space(method: str, base: TrainConfig) -> dict[str, Param]:
    """A network's default space: learning rate, weight decay, label smoothing, epochs and batch size around
    ``base`` (the recipe), its widths and dropout, and the augmentation magnitudes when augmentation is on."""
    epochs = base.epochs
    space = [
        Param("lr", base.lr / 10, base.lr * 3, log=True),
        Param("weight_decay", 1e-6, 1e-3, log=True),
        Param("label_smoothing", 0.0, 0.2),
        Param("epochs", max(1, epochs // 2), max(2, epochs + epochs // 2)),
        Param("batch_size", choices=tuple(sorted({64, 128, 256, base.batch_size}))),
        *(Param(name, choices=choices) for name, choices in check_method(method).search.items()),
    ]
    if base.augment:
        space += [Param("rotation", 0.0, 15.0), Param("zoom", 0.0, 0.2), Param("shift", 0.0, 0.2)]
    return {param.name: param for param in space}


def read_space(path: str | Path, method: str, base: TrainConfig) -> dict[str, Param]:
    """The space of a TOML file (one table per setting); raises ValueError naming the file, the setting and
    the fault. An empty table takes the setting's range from :func:`default_space`."""
    text = read_bounded(path, MAX_SPACE_FILE, "a search space")
    try:
        values = tomllib.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError) as err:  # RecursionError: deep nesting
        raise ValueError(f"{path}: cannot read the search space ({str(err)[:200] or type(err).__name__})") from None
    return parse_space(values, method, base, str(path))


def parse_space(values: dict, method: str, base: TrainConfig, where: str = "search space") -> dict[str, Param]:
    defaults = default_space(method, base)
    space = {}
    for name, table in values.items():
        key = f"{where}: {name}"
        if name not in FIELD_TYPES:
            raise ValueError(f"{where}: unknown setting '{name}'; known: {', '.join(FIELD_TYPES)}")
        if name in NOT_SEARCHED:
            raise ValueError(f"{key}: cannot be searched ({NOT_SEARCHED[name]})")
        if not isinstance(table, dict):
            raise ValueError(f"{key}: expected a table with low and high, or choices; got {table!r}")
        unknown = sorted(set(table) - {"low", "high", "log", "choices"})
        if unknown:
            raise ValueError(f"{key}: unknown key '{unknown[0]}'; expected low, high, log or choices")
        if not table:
            if name not in defaults:
                raise ValueError(f"{key}: an empty table takes the default range, and the {method} network's "
                                 "default space has none for it; give low and high, or choices")
            space[name] = defaults[name]
        else:
            space[name] = _param(name, table, key)
    return space


def _param(name: str, table: dict, key: str) -> Param:
    kind = FIELD_TYPES[name]
    if "choices" in table:
        if len(table) > 1:
            raise ValueError(f"{key}: give low and high, or choices, not both")
        choices = table["choices"]
        if not isinstance(choices, list) or not choices:
            raise ValueError(f"{key}: choices must be a non-empty list, got {choices!r}")
        return Param(name, choices=tuple(_typed(choice, kind, f"{key}: each choice") for choice in choices))
    if kind not in ("int", "float"):
        raise ValueError(f"{key}: takes choices (a list of {'lists' if kind.startswith('tuple') else 'values'}), "
                         "not low and high")
    if "low" not in table or "high" not in table:
        raise ValueError(f"{key}: give both low and high (or choices)")
    low, high = (_typed(table[bound], kind, f"{key}: {bound}") for bound in ("low", "high"))
    log = table.get("log", False)
    if not isinstance(log, bool):
        raise ValueError(f"{key}: log must be true or false, got {log!r}")
    if kind == "float" and not (math.isfinite(low) and math.isfinite(high)):  # an int is finite, however long
        raise ValueError(f"{key}: low and high must be finite numbers")
    if not low < high:
        raise ValueError(f"{key}: low ({low:g}) must be below high ({high:g})")
    if log and low <= 0:
        raise ValueError(f"{key}: log = true needs low above 0, got {low:g}")
    return Param(name, low, high, log)


def check_space(space: dict[str, Param], method: str, base: TrainConfig, where: str = "search space") -> None:
    """Refuse, before any training, a setting the network does not use, and a range or choice that could not
    train: each extreme, and each pair of extremes of two settings, is checked with :meth:`TrainConfig.validate`
    on top of ``base``."""
    for name, param in space.items():
        key = f"{where}: {name}"
        if name in SHAPE_SETTINGS and name not in check_method(method).shape:
            raise ValueError(f"{key}: the {method} network does not use this setting")
        for value in param.extremes():
            try:
                dataclasses.replace(base, **{name: value}).validate()
            except ValueError as err:
                raise ValueError(f"{key}: {label(value)} cannot work: {err}") from None
    # Settings that constrain each other (whitening and the first filter count, say): every pair of extremes.
    for first, second in itertools.combinations(space, 2):
        for a, b in itertools.product(space[first].extremes(), space[second].extremes()):
            try:
                dataclasses.replace(base, **{first: a, second: b}).validate()
            except ValueError as err:
                raise ValueError(f"{where}: {first} {label(a)} with {second} {label(b)} cannot work: {err}") from None


def make_space(method: str, base: TrainConfig, path: str | Path | None = None,
               fixed: set[str] | frozenset[str] = frozenset()) -> dict[str, Param]:
    """The space to search: the file's (or the network's default), less the ``fixed`` settings (given as flags
    or in a config file: not searched), checked. Raises ValueError naming the setting and the fault."""
    space = read_space(path, method, base) if path is not None else default_space(method, base)
    check_space(space, method, base, str(path) if path is not None else "default search space")
    space = {name: param for name, param in space.items() if name not in fixed}
    if not space:
        raise ValueError("nothing to search: every setting of the space is fixed by a flag or --config")
    return space


def label(value: object) -> str:
    """A setting's value as shown in tables and messages; a list as "16,32,64"."""
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
