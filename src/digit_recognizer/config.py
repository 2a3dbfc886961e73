"""Settings: the training config, one record per method and one per preset.

Kept free of torch and scikit-learn so that the command line can build its flags, and ONNX prediction can
run, without importing either. :class:`TrainConfig`'s defaults are the seed kernel's recipe: RMSprop at 1e-3,
learning rate halved when validation accuracy has not improved for 3 epochs (floor 1e-5), batch 86, 30 epochs,
a 10 % stratified validation split, augmentation by rotation, zoom and shift.

Every config that comes from outside (a flag, a TOML or JSON file, a saved run) goes through
:meth:`TrainConfig.from_dict`, which checks names and types, then :meth:`TrainConfig.validate`, which checks
values: a setting that would fail later fails here, before any data is read or trained on.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field

# Each is a case of train.make_optimizer.
OPTIMIZER_NAMES = ("rmsprop", "adam", "adamw", "sgd")
SCHEDULES = ("plateau", "onecycle", "triangle")
PRECISIONS = ("auto", "native", "bf16", "fp32")
INITS = ("default", "dirac")
CROPS = (12, 16, 20, 24, 28)
DEVICE_HELP = "device must be auto, cpu, cuda or cuda:N"
# A network's history, one row per epoch: what the training loop records and the run directory reads back
# (history.csv). Here because both use it and neither imports the other.
HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds", "images_per_second",
                   "elapsed")


def is_device_name(name: str) -> bool:
    """Whether ``name`` is a device the project trains and predicts on: auto (CUDA when there is one), cpu,
    cuda or cuda:N."""
    return re.fullmatch(r"auto|cpu|cuda(:\d{1,3})?", name) is not None


@dataclass
class TrainConfig:
    # Network (which of them shape a network: its method's record, Method.shape)
    filters: tuple[int, ...] = (32, 64, 128)
    kernels: tuple[int, ...] = (5, 3, 3)
    dense: int = 256
    dropout: tuple[float, ...] = (0.25, 0.25, 0.25, 0.5)
    pool_first: bool = False  # fast network: pool before BatchNorm and ReLU (their work on a quarter of the pixels)
    # fast network: the side of the central square it looks at. MNIST digits are centred in a 20x20 box, so a
    # 24x24 crop keeps all but 0.24 % of the ink of the training images for 0.73x the arithmetic.
    crop: int = 28
    # Optimisation
    epochs: int = 30
    batch_size: int = 86
    optimizer: str = "rmsprop"
    lr: float = 1e-3
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    # Exponential moving average of the weights, decay per step (0: off); BatchNorm statistics recomputed for it
    ema: float = 0.0
    # "plateau": multiply lr by lr_factor when val accuracy stalls for lr_patience epochs (floor min_lr);
    # "onecycle": warm up to lr over the first quarter of the steps, then anneal to ~0 (cosine);
    # "triangle": the same with straight lines, up over the first quarter, then down to 0.
    schedule: str = "plateau"
    lr_factor: float = 0.5
    lr_patience: int = 3
    min_lr: float = 1e-5
    # Arithmetic (hardware.autocast_dtype): "auto" is half precision on a GPU (bfloat16 where the card has it,
    # else float16 with a loss scale) and float32 on a CPU; "native" also picks bfloat16 on a CPU that computes it
    # natively (AVX512-BF16 or AMX); "bf16", "fp32" force. The network predicts in the same arithmetic.
    precision: str = "auto"
    # Initialisation: "dirac" starts every convolution with as many channels out as in (the second of each pair)
    # as the identity, so that each pair starts as one convolution.
    init: str = "default"
    # BatchNorm: momentum (torch's convention: the weight of each batch's statistics), whether its scale learns
    # (False: fixed at 1, only the shift learns), and its shift's learning rate as a multiple of lr.
    bn_momentum: float = 0.1
    bn_scale: bool = True
    bn_bias_lr: float = 1.0
    # Muon (orthogonalised momentum, torch.optim.Muon) for the convolution filters after the first, at this peak
    # learning rate on the same schedule; 0: off. The other weights keep the optimizer (sgd only).
    muon_lr: float = 0.0
    # The first convolution's filters set to whiten the training images' patches (half of them the negatives of
    # the others) and frozen; its BatchNorm still learns.
    whiten: bool = False
    # Data
    val_fraction: float = 0.1
    seed: int = 2
    augment: bool = True
    rotation: float = 10.0
    zoom: float = 0.1
    shift: float = 0.1
    elastic: float = 0.0  # elastic distortion's strength in pixels (Simard et al. 2003 used 34); 0: none
    # Hardware: "auto" picks CUDA when available
    device: str = "auto"

    @classmethod
    def from_dict(cls, values: dict, where: str = "settings") -> TrainConfig:
        """Build a config from plain values (TOML, JSON, flags), refusing unknown names and wrong types.

        Lists become tuples; an int is accepted where a float is expected, never a bool where a number is.
        Raises ValueError naming ``where`` and the setting. The result is not yet :meth:`validate`-d.
        """
        if not isinstance(values, dict):
            raise ValueError(f"{where}: expected a table of settings, got {type(values).__name__}")
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        checked = {}
        for key, value in values.items():
            if key not in types:
                raise ValueError(f"{where}: unknown setting '{key}'; known: {', '.join(types)}")
            checked[key] = _typed(value, types[key], f"{where}: {key}")
        return cls(**checked)

    def validate(self) -> None:
        """Raise ValueError naming the first setting that cannot work."""
        def finite(x: float) -> bool:
            return math.isfinite(x)

        checks = [
            (1 <= self.epochs <= 10_000, "epochs must be in 1 .. 10000"),
            (2 <= self.batch_size <= 65_536, "batch_size must be in 2 .. 65536 (BatchNorm needs two images)"),
            (finite(self.lr) and self.lr > 0, "lr must be a finite number above 0"),
            (finite(self.weight_decay) and self.weight_decay >= 0, "weight_decay must be a finite number >= 0"),
            (0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
            (0 <= self.ema < 1, "ema must be in [0, 1): the averaging's decay per step, 0 for none"),
            (self.optimizer in OPTIMIZER_NAMES, f"optimizer must be one of {', '.join(OPTIMIZER_NAMES)}"),
            (self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}"),
            (self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}"),
            (self.init in INITS, f"init must be one of {', '.join(INITS)}"),
            (0 < self.bn_momentum <= 1, "bn_momentum must be in (0, 1]"),
            (finite(self.bn_bias_lr) and 0 < self.bn_bias_lr <= 1000, "bn_bias_lr must be in (0, 1000]"),
            (finite(self.muon_lr) and 0 <= self.muon_lr <= 10, "muon_lr must be in [0, 10], 0 for none"),
            (self.muon_lr == 0 or self.optimizer == "sgd", "muon_lr works with optimizer sgd (for the other weights)"),
            (not self.whiten or (len(self.filters) > 0 and self.filters[0] % 2 == 0 and self.filters[0] <= 18),
             "whiten needs an even first filters count of at most 18 (a 3x3 patch's 9 directions, each both ways)"),
            (0 < self.lr_factor < 1, "lr_factor must be between 0 and 1"),
            (0 <= self.lr_patience <= 10_000, "lr_patience must be in 0 .. 10000"),
            (finite(self.min_lr) and self.min_lr >= 0, "min_lr must be a finite number >= 0"),
            (0 < self.val_fraction < 1, "val_fraction must be between 0 and 1"),
            (0 <= self.seed < 2**31, "seed must be in 0 .. 2^31 - 1"),
            (len(self.filters) == 3 and all(1 <= f <= 1024 for f in self.filters),
             "filters takes 3 values in 1 .. 1024"),
            (len(self.kernels) == 3 and all(k in (1, 3, 5, 7, 9) for k in self.kernels),
             "kernels takes 3 odd sizes in 1 .. 9 (an even size would shift the image)"),
            (1 <= self.dense <= 8192, "dense must be in 1 .. 8192"),
            (self.crop in CROPS, f"crop must be one of {', '.join(map(str, CROPS))} (a centred square, pooled twice)"),
            (len(self.dropout) == 4 and all(0 <= d < 1 for d in self.dropout), "dropout takes 4 values in [0, 1)"),
            (0 <= self.rotation <= 180, "rotation must be in 0 .. 180 degrees"),
            (0 <= self.zoom < 1 and 0 <= self.shift < 1, "zoom and shift must be fractions in [0, 1)"),
            (finite(self.elastic) and 0 <= self.elastic <= 100, "elastic must be in 0 .. 100 pixels"),
            (is_device_name(self.device), DEVICE_HELP),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def settings(self) -> dict:
        """The settings that decide a result, as plain JSON values: all but the device (hardware: a run may
        resume, or a search go on, on another)."""
        values = {key: list(value) if isinstance(value, tuple) else value for key, value in self.to_dict().items()}
        del values["device"]
        return values


def completed(recorded: dict) -> dict:
    """Settings recorded by an earlier version (a run's ``run.json``, a result line), completed with the defaults
    of the settings added since: what that version trained with, so a run made before a setting existed resumes
    and compares as the same settings."""
    return {**TrainConfig().settings(), **recorded}


def _typed(value: object, annotation: str, where: str) -> object:
    """``value`` converted to the field's type (annotations are strings: postponed evaluation)."""
    if annotation.startswith("tuple["):
        if not isinstance(value, list | tuple):
            raise ValueError(f"{where} must be a list, got {_short(value)}")
        item = annotation[len("tuple["):-len(", ...]")]
        return tuple(_typed(v, item, where) for v in value)
    if annotation == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {_short(value)}")
        return value
    if annotation == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where} must be a whole number, got {_short(value)}")
        return value
    if annotation == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{where} must be a number, got {_short(value)}")
        try:
            return float(value)
        except OverflowError:  # an integer of hundreds of digits
            raise ValueError(f"{where} must be a number within float range, got {_short(value)}") from None
    if annotation == "str":
        if not isinstance(value, str):
            raise ValueError(f"{where} must be a string, got {_short(value)}")
        return value
    raise TypeError(f"no conversion for {annotation}")  # a new field type: a programming error


def _short(value: object) -> str:
    """A value for a message, cut: a 400-digit integer is shown by its first digits and its length."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**40:
        return f"{str(value)[:12]}... ({len(str(abs(value)))} digits)"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# --- methods: one record each -------------------------------------------------------------------------------

# Settings that shape a network, each used by some networks.
SHAPE_SETTINGS = ("filters", "kernels", "dense", "dropout", "pool_first", "crop")


@dataclass(frozen=True)
class Method:
    """A way to train a model, by name: everything the package knows of it, in one record.

    ``builder`` names what makes it: a network class in :mod:`digit_recognizer.models` (built from the settings
    named in ``shape``) or a scikit-learn pipeline factory in :mod:`digit_recognizer.methods`. A network has a
    ``recipe`` (its default training settings) and ``search``, the choices its default search space offers for
    its shape settings (:mod:`digit_recognizer.tune`); a classic method has neither. To add a network: write
    its class in models.py and add its record here.
    """

    description: str
    builder: str
    recipe: TrainConfig | None = None
    shape: tuple[str, ...] = ()
    search: dict[str, tuple] = field(default_factory=dict)

    @property
    def network(self) -> bool:
        return self.recipe is not None


# The fast network's recipe and shape, which the wide network shares (all but its filters).
FAST_RECIPE = TrainConfig(filters=(16, 32, 64), dense=128, epochs=8, batch_size=128, optimizer="sgd", lr=0.1,
                          weight_decay=5e-4, label_smoothing=0.1, schedule="onecycle", precision="native",
                          pool_first=True, crop=24, muon_lr=0.05)
FAST_SHAPE = ("filters", "dense", "pool_first", "crop")
FAST_SEARCH = {"filters": ((16, 32, 64), (24, 48, 96), (32, 64, 128)), "dense": (64, 128, 256)}

# The classic settings were chosen by 3-fold cross-validation (benchmarks/tune_classic.py).
METHODS: dict[str, Method] = {
    "logreg": Method("multinomial logistic regression on pixels / 255", "logreg"),
    "knn": Method("k-nearest neighbours (k = 6, distance-weighted) on 30 PCA components", "knn"),
    "svm": Method("SVM with an RBF kernel on 50 PCA components", "svm"),
    "forest": Method("random forest, 300 trees", "forest"),
    "mlp": Method("fully connected network 784-512-256-10", "MLP",
                  TrainConfig(optimizer="adam", epochs=20, batch_size=128)),
    # A small BatchNorm CNN with a one-cycle schedule and label smoothing: the seed's accuracy in a sixth of
    # its time. 8 epochs, Muon for the convolutions after the first, the central 24x24 pixels, pooling before
    # BatchNorm and ReLU, and bfloat16 where the CPU computes it natively (benchmarks/recipes/
    # quick8_muon_crop24.toml): with the fast preset's TTA, 176.3 errors out of fold over 3 seeds against 182.7
    # for the 12-epoch float32 recipe it replaced (baseline.toml), from the CSVs to the submission in 0.39x its
    # time on an Intel Xeon with AMX. Every variant tried, judged out of fold over several seeds, is in
    # docs/results.md.
    "fast": Method("small BatchNorm CNN 16-32-64, one-cycle schedule", "FastCNN", FAST_RECIPE,
                   shape=FAST_SHAPE, search=FAST_SEARCH),
    # The fast network at twice the width, trained the same way: 4x the multiply-adds and, where bfloat16 runs on
    # AMX, 2.1x the seconds per epoch, for 161 errors out of fold against 187 (155 against 174 with TTA) on the
    # same seed and folds; twice as wide again (64-128-256) did no better on two folds at 2.8x the time
    # (docs/results.md). The ensemble preset's member.
    "wide": Method("BatchNorm CNN 32-64-128: the fast network at twice the width", "FastCNN",
                   dataclasses.replace(FAST_RECIPE, filters=(32, 64, 128)), shape=FAST_SHAPE, search=FAST_SEARCH),
    # The seed kernel's recipe, unchanged: TrainConfig's defaults.
    "cnn": Method("the seed kernel's CNN and recipe", "SeedCNN", TrainConfig(),
                  shape=("filters", "kernels", "dense", "dropout"),
                  search={"filters": ((16, 32, 64), (32, 64, 128), (48, 96, 192)), "dense": (128, 256, 512),
                          "dropout": ((0.1, 0.1, 0.1, 0.25), (0.25, 0.25, 0.25, 0.5), (0.4, 0.4, 0.4, 0.5))}),
}
METHOD_NAMES = tuple(METHODS)
NETWORK_NAMES = tuple(name for name, method in METHODS.items() if method.network)


def check_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown model '{name}'; known: {', '.join(METHODS)}")
    return METHODS[name]


def method_config(name: str) -> TrainConfig:
    """A fresh copy of the settings a method starts from (a classic method uses only the split settings)."""
    return dataclasses.replace(check_method(name).recipe or TrainConfig())


# --- distillation ---------------------------------------------------------------------------------------------

# `distill --temperature`'s default. The default teachers (the fast recipe, label smoothing 0.1) put nearly the same
# small probability on every wrong digit; softening them further (T = 2) left their students worse than T = 1 did
# (202 against 195 errors out of fold from four teachers), and teachers trained without it did worse at T = 2
# (222): docs/results.md.
DEFAULT_TEMPERATURE = 1.0


# --- presets: what --preset trains ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Preset:
    """A named choice of method, ensemble size and whether the submission uses test-time augmentation."""

    method: str
    members: int = 1
    folds: int = 1
    tta: bool = False


# `--preset fast`: one fast network, its submission with TTA (the shifted copies of the 1-3 % of test digits it is
# unsure of cost under a second and save about ten errors out of fold: docs/results.md).
# `--preset ensemble`: 8 wide networks x 5 folds, scored out of fold on every training row, its submission the
# average of all 40 with TTA: 153 errors out of fold (148 with TTA) in 55-68 minutes on 2 CPU cores with AMX, where 8
# fast networks made 165 (162) in 25 (docs/results.md). Width is what bought it: one wide network makes fewer errors
# than the 8 fast ones together, while more members of one kind saturate and members that differ by recipe share as
# many mistakes as members that differ by seed. The same on a GPU: the seed network costs 7.7x the fast one's
# multiply-adds and 3.75x its epochs, and scored no better per network, out of fold or on a labelled sample of
# the test set.
PRESETS: dict[str, Preset] = {
    "seed": Preset("cnn"),
    "fast": Preset("fast", tta=True),
    "ensemble": Preset("wide", members=8, folds=5, tta=True),
}


def preset(name: str) -> Preset:
    """The preset of that name."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset '{name}'; known: {', '.join(PRESETS)}")
    return PRESETS[name]


def choose(preset_name: str | None, model: str | None, members: int | None, folds: int | None,
           tta: bool | None = None) -> Preset:
    """What a training command trains: ``--preset`` (default ``seed``) and ``--model``, ``--members``, ``--folds``,
    ``--tta/--no-tta``, which win over it. Raises ValueError for a combination that cannot work."""
    chosen = preset(preset_name or "seed")
    if preset_name and model and model != chosen.method:
        raise ValueError(f"--preset {preset_name} trains model '{chosen.method}', not '{model}'")
    method = check_method(model or chosen.method)
    members = (chosen.members if preset_name else 1) if members is None else members
    folds = (chosen.folds if preset_name else 1) if folds is None else folds
    if members < 1 or folds < 1:
        raise ValueError("--members and --folds must be at least 1")
    if (members > 1 or folds > 1) and not method.network:
        raise ValueError(f"--members and --folds train networks; '{model or chosen.method}' is not one")
    if tta and not method.network:
        raise ValueError("--tta applies to networks, not to scikit-learn models")
    tta = (chosen.tta if preset_name else False) if tta is None else tta
    return Preset(model or chosen.method, members, folds, tta)
