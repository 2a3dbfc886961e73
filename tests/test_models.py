"""The networks: the seed architecture, options, weight files, batch-size independence, weight averaging, and
the scikit-learn wrapper against scikit-learn's own estimator checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors import safe_open
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks

from digit_recognizer.config import TrainConfig
from digit_recognizer.methods import NetClassifier
from digit_recognizer.models import SeedCNN, build_network, load_weights, save_weights


def conv(c_in: int, c_out: int, k: int) -> int:
    """Parameters of a convolution: its weights and biases."""
    return c_in * c_out * k * k + c_out


def test_output_shape():
    """The seed CNN maps a batch of 28x28 images to 10 scores each."""
    network = SeedCNN().eval()
    assert network(torch.rand(5, 1, 28, 28)).shape == (5, 10)


def test_parameter_count_matches_the_seed_architecture():
    """The seed CNN has exactly the seed kernel's layers' parameters: 1,912,746."""
    expected = (
        conv(1, 32, 5) + conv(32, 32, 5) + 2 * 32          # conv pair + BatchNorm
        + conv(32, 64, 3) + conv(64, 64, 3) + 2 * 64
        + conv(64, 128, 3) + conv(128, 128, 3) + 2 * 128
        + (128 * 7 * 7 * 256 + 256) + 2 * 256              # Dense + BatchNorm
        + (256 * 10 + 10)                                  # Out
    )
    assert sum(p.numel() for p in SeedCNN().parameters()) == expected == 1_912_746


def test_layer_order_follows_the_seed():
    """The seed CNN's layers come in the seed kernel's order."""
    kinds = [type(m).__name__ for m in SeedCNN().modules() if not isinstance(m, torch.nn.Sequential)][1:]
    block = ["Conv2d", "ReLU", "Conv2d", "ReLU", "BatchNorm2d"]
    assert kinds == [
        *block, "MaxPool2d", "Dropout", *block, "MaxPool2d", "Dropout", *block, "Dropout",
        "Flatten", "Linear", "ReLU", "BatchNorm1d", "Dropout", "Linear",
    ]


def test_options_change_the_network():
    """Filters and dense units change the network built; an unknown network name is refused."""
    network = build_network("cnn", TrainConfig(filters=(8, 16, 32), dense=64))
    assert network(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert network.classifier[1].out_features == 64
    with pytest.raises(ValueError, match="unknown network 'nope'"):
        build_network("nope")


def test_weights_round_trip(tmp_path):
    """Weights saved and loaded give the same outputs; the file holds tensors only, and no temporary file is
    left."""
    torch.manual_seed(0)
    cfg = TrainConfig(filters=(8, 16, 32), dense=32)
    network = build_network("cnn", cfg).eval()
    save_weights(network, tmp_path / "model.safetensors")
    loaded = load_weights(build_network("cnn", cfg), tmp_path / "model.safetensors")
    x = torch.rand(4, 1, 28, 28)
    torch.testing.assert_close(loaded(x), network(x))
    # The weights file is plain safetensors (no pickled code): its header lists tensors only.
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        assert len(list(f.keys())) == len(network.state_dict())
    assert not list(tmp_path.glob(".*tmp"))


def test_weights_for_another_network_are_refused(tmp_path):
    """Weights of one network do not load into another: a ValueError says so."""
    save_weights(build_network("fast"), tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="do not fit the network"):
        load_weights(build_network("cnn"), tmp_path / "model.safetensors")


def test_predictions_do_not_depend_on_the_batch_size():
    """Probabilities are the same predicted in one batch or in batches of 7."""
    from digit_recognizer.evaluate import network_proba

    torch.manual_seed(0)
    network = build_network("fast")
    network(torch.rand(8, 1, 28, 28))  # one training-mode pass gives BatchNorm non-trivial statistics
    images = torch.randint(0, 256, (300, 784), dtype=torch.uint8).numpy()
    np.testing.assert_allclose(network_proba(network, images), network_proba(network, images, batch_size=7),
                               atol=1e-5)


def test_weight_averaging_recomputes_batchnorm_statistics_for_the_averaged_weights(embedded):
    """With ``ema``, the returned network has the averaged weights, and each BatchNorm layer's running
    statistics are those of its inputs under those weights (on the recalibration images), not the trained
    network's."""
    from digit_recognizer.data import Digits
    from digit_recognizer.models import to_input
    from digit_recognizer.train import fit

    train = Digits(embedded[0].images[:512], embedded[0].labels[:512])
    cfg = TrainConfig(filters=(4, 8, 8), dense=16, epochs=2, batch_size=64, optimizer="sgd", lr=0.05,
                      schedule="onecycle", ema=0.9)
    network, _ = fit("fast", cfg, train, train, torch.device("cpu"), progress=False)
    plain, _ = fit("fast", TrainConfig(**{**cfg.to_dict(), "ema": 0.0}), train, train, torch.device("cpu"),
                   progress=False)
    assert not torch.equal(network.features[0].weight, plain.features[0].weight)  # the average differs

    inputs = {}
    norms = [m for m in network.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    stats = {m: (m.running_mean.clone(), m.running_var.clone()) for m in norms}  # the forward below moves them

    def keep_input(module, args, output) -> None:
        inputs[module] = args[0].clone()  # a copy: the ReLU after the BatchNorm works in place

    hooks = [m.register_forward_hook(keep_input) for m in norms]
    network.train()
    with torch.no_grad():
        network(to_input(torch.from_numpy(train.images)).contiguous(memory_format=torch.channels_last))
    network.eval()
    for hook in hooks:
        hook.remove()
    for norm in norms:  # the statistics of the averaged network's own activations
        x, (mean, var) = inputs[norm], stats[norm]
        # Recalibration runs two batches of 256, this one batch of 512: the layers after the first see inputs
        # normalised by slightly different batch statistics, hence close rather than equal.
        torch.testing.assert_close(mean, x.mean(dim=(0, 2, 3)), atol=2e-3, rtol=1e-2)
        torch.testing.assert_close(var, x.var(dim=(0, 2, 3)), atol=1e-3, rtol=0.05)


# Why scikit-learn's own estimator checks fail on NetClassifier, by check. The checks fit estimators on a few rows
# of a few features with labels of any kind; NetClassifier learns the ten digits from 28x28 images.
IMAGES = ("the network takes 28x28 images (784 pixel columns) and holds out a stratified validation split with "
          "every class in it; the check fits a few rows of a few features")
DIGITS = "NetClassifier learns the ten digits: its labels are the integers 0-9, and the check's are not"
EXPECTED_FAILED_CHECKS = {
    **dict.fromkeys([
        "check_dict_unchanged", "check_dont_overwrite_parameters", "check_estimators_dtypes",
        "check_estimators_fit_returns_self",
        "check_estimators_overwrite_params", "check_estimators_pickle", "check_f_contiguous_array_estimator",
        "check_fit2d_1feature", "check_fit2d_predict1d", "check_fit_check_is_fitted", "check_fit_idempotent",
        "check_fit_score_takes_y", "check_classifiers_train", "check_methods_sample_order_invariance",
        "check_methods_subset_invariance", "check_n_features_in", "check_n_features_in_after_fitting",
        "check_pipeline_consistency", "check_positive_only_tag_during_fit", "check_readonly_memmap_input",
        "check_supervised_y_2d", "check_classifier_data_not_an_array", "check_dtype_object",
        "check_estimators_nan_inf"], IMAGES),
    **dict.fromkeys([
        "check_classifiers_classes", "check_classifiers_one_label", "check_classifiers_regression_target",
        "check_requires_y_none"], DIGITS),
}


@parametrize_with_checks(
    [NetClassifier("mlp", device="cpu")],  # no check trains it: each that would fails on the images first
    expected_failed_checks=lambda estimator: EXPECTED_FAILED_CHECKS,
    xfail_strict=True,  # a check listed above that passes fails the test: the list must be kept true
)
def test_net_classifier_against_scikit_learns_estimator_checks(estimator, check):
    """NetClassifier passes each of scikit-learn's estimator checks that can apply to a classifier of 28x28
    digit images (parameters, cloning, repr, tags, ...); the others are expected to fail, each for the reason
    listed in EXPECTED_FAILED_CHECKS."""
    check(estimator)


@pytest.mark.parametrize("X, y, message", [
    (np.full((20, 784), 0.5), np.arange(20) % 10, "X: pixels must be whole numbers 0-255"),  # scaled to [0, 1]
    (np.full((20, 784), 300), np.arange(20) % 10, "X: pixels must be whole numbers 0-255"),
    (np.zeros((20, 100)), np.arange(20) % 10, "X: expected 784 pixel columns"),
    (np.zeros((20, 784)), np.arange(20) % 10 + 1, "y: labels must be the digits 0-9"),
    (np.zeros((20, 784)), np.arange(19) % 10, r"y: expected one label per image \(20\)"),
])
def test_net_classifier_refuses_what_is_not_digit_images_before_training(X, y, message):
    """Input is checked once, at the boundary, with a message naming it: a float image in [0, 1] would otherwise
    be cast to nearly black pixels and train without a word."""
    with pytest.raises(ValueError, match=message):
        NetClassifier("fast", device="cpu").fit(X, y)


def test_an_unfitted_net_classifier_says_so():
    with pytest.raises(NotFittedError):
        NetClassifier("fast").predict(np.zeros((1, 784), dtype=np.uint8))
