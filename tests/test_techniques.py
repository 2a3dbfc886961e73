"""The training techniques that are settings (each off by default): what makes each correct."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from conftest import TINY_FLAGS
from conftest import tiny as shared_tiny
from torch import nn

import digit_recognizer.hardware as hardware
import digit_recognizer.train as train_module
from digit_recognizer.cli import main
from digit_recognizer.config import TrainConfig
from digit_recognizer.data import Digits
from digit_recognizer.distill import train_student
from digit_recognizer.evaluate import network_proba, network_proba_and_tta
from digit_recognizer.export import export_onnx
from digit_recognizer.jobs import Job, train_job
from digit_recognizer.methods import NetClassifier
from digit_recognizer.models import build_network
from digit_recognizer.predict import OnnxPredictor, TorchPredictor
from digit_recognizer.train import (
    build,
    fit,
    make_optimizer,
    make_schedule,
    prepare,
    whitening_filters,
)


def tiny(**changes: object) -> TrainConfig:
    """conftest's tiny network, two epochs of batches of 32."""
    return shared_tiny(**{"epochs": 2, "batch_size": 32, **changes})


@pytest.fixture(scope="module")
def digits(embedded) -> tuple[Digits, Digits]:
    train = embedded[0]
    return Digits(train.images[:256], train.labels[:256]), Digits(train.images[256:320], train.labels[256:320])


BF16, FP16 = torch.bfloat16, torch.float16


@pytest.mark.parametrize("precision, device, native, expected", [
    ("auto", "cpu", True, None), ("auto", "cuda", True, BF16), ("auto", "cuda", False, FP16),
    ("native", "cpu", True, BF16), ("native", "cpu", False, None), ("native", "cuda", True, BF16),
    ("native", "cuda", False, FP16), ("bf16", "cpu", False, BF16), ("bf16", "cuda", False, BF16),
    ("fp32", "cuda", True, None), ("fp32", "cpu", True, None),
])
def test_precision_picks_the_autocast_dtype_by_the_hardware_unless_forced(precision, device, native, expected,
                                                                          monkeypatch):
    """bfloat16 where the hardware has it (a CPU with AVX512-BF16 or AMX when asked for "native"; a GPU of compute
    capability 8 or later), float16 on older GPUs (P100, T4), float32 on a CPU by default."""
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: native)
    monkeypatch.setattr(hardware, "cuda_has_bf16", lambda device: native)
    assert hardware.autocast_dtype(precision, torch.device(device)) is expected


def test_float16_training_scales_the_loss_and_checkpoints_the_scale(digits, monkeypatch):
    """Where float16 is the autocast dtype (older GPUs), training goes through a gradient scaler, whose state
    travels in the checkpoint; with Muon, whose momentum the scaler cannot unscale, it trains in float32 instead.
    Simulated on the CPU: the dtype choice is forced, and the scaler runs disabled there."""
    monkeypatch.setattr(train_module, "autocast_dtype", lambda precision, device: FP16)
    training = build("fast", tiny(), torch.device("cpu"), steps_per_epoch=8)
    assert isinstance(training.scaler, torch.amp.GradScaler) and "scaler" in training.state(torch.device("cpu"))
    muon = tiny(muon_lr=0.05)
    assert train_module.training_dtype(muon, torch.device("cpu")) is None
    assert build("fast", muon, torch.device("cpu"), steps_per_epoch=8).scaler is None
    assert train_module.training_dtype(tiny(), torch.device("cpu")) is FP16
    steps = []
    real_step = torch.amp.GradScaler.step
    monkeypatch.setattr(torch.amp.GradScaler, "step", lambda self, *a, **k: steps.append(1) or real_step(self, *a, **k))
    _, history = fit("fast", tiny(), *digits, torch.device("cpu"), progress=False)
    assert len(steps) == 2 * 8 and history[-1]["loss"] < history[0]["loss"]  # every step through the scaler
    monkeypatch.setattr(train_module, "autocast_dtype", lambda precision, device: None)
    assert build("fast", tiny(), torch.device("cpu"), steps_per_epoch=8).scaler is None


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_training_runs_under_the_autocast_its_precision_asks_for(precision, digits, monkeypatch):
    """Each training step's forward pass, and each epoch's validation, is under bfloat16 autocast exactly when
    asked; the weights stay float32 and the training learns."""
    seen, validated = [], []
    real = torch.autocast

    def spy(device_type, dtype=None, enabled=True, **kwargs):
        # a training step, or evaluation (which runs under inference mode)
        (seen if torch.is_grad_enabled() else validated).append(enabled)
        return real(device_type, dtype=dtype, enabled=enabled, **kwargs)

    monkeypatch.setattr(torch, "autocast", spy)
    network, history = fit("fast", tiny(precision=precision), *digits, torch.device("cpu"), progress=False)
    assert seen and set(seen) == {precision == "bf16"}
    assert validated and set(validated) == {precision == "bf16"}
    assert all(p.dtype == torch.float32 for p in network.parameters())
    assert np.isfinite([row["loss"] for row in history]).all() and history[-1]["loss"] < history[0]["loss"] * 1.5


def test_a_network_predicts_in_the_arithmetic_it_trained_in(digits, monkeypatch):
    """A network trained in "native" precision predicts in bfloat16 where the CPU computes it (there the wide
    ensemble predicted 1.6-2.1x faster, with the same errors) and in float32 where it does not; a network trained in
    float32 predicts in float32 on any CPU."""
    train, val = digits
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: False)  # trains in float32 on every machine
    model = NetClassifier("fast", tiny(precision="native"), device="cpu").fit(train.images, train.labels)
    exact = network_proba(model.network_, val.images, precision="fp32")
    half = network_proba(model.network_, val.images, precision="bf16")
    assert not np.allclose(half, exact, rtol=0, atol=1e-5)  # the two arithmetics tell apart
    np.testing.assert_allclose(model.predict_proba(val.images), exact, rtol=0, atol=1e-7)
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: True)
    np.testing.assert_allclose(model.predict_proba(val.images), half, rtol=0, atol=1e-7)
    model.config = tiny(precision="fp32")
    np.testing.assert_allclose(model.predict_proba(val.images), exact, rtol=0, atol=1e-7)


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("kind", ["member", "student"])
def test_held_out_rows_are_scored_in_the_arithmetic_the_network_trained_in(kind, native, digits, monkeypatch):
    """An ensemble member's and a distilled student's held-out rows (their out-of-fold score, with and without TTA)
    are predicted as the served network predicts: in bfloat16 where a "native" network trained in it, else float32."""
    train, val = digits
    both = Digits(np.concatenate([train.images, val.images]), np.concatenate([train.labels, val.labels]))
    job = Job("member0-fold0", "fast", tiny(precision="native"), np.arange(len(train.labels)),
              np.arange(len(train.labels), len(both.labels)), heldout_tta=True)
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: native)
    if kind == "member":
        result = train_job(job, both)
    else:
        targets = np.full((len(train.labels) + len(val.labels), 10), 0.1, dtype=np.float32)
        result = train_student(job, both, val, targets, temperature=1.0)
    network = result.estimator.network_
    expected = network_proba_and_tta(network, val.images, "cpu", "bf16" if native else "fp32")
    other = network_proba_and_tta(network, val.images, "cpu", "fp32" if native else "bf16")
    assert not np.allclose(expected[0], other[0], rtol=0, atol=1e-5)  # the two arithmetics tell apart
    np.testing.assert_allclose(result.proba, expected[0], rtol=0, atol=1e-7)
    np.testing.assert_allclose(result.proba_tta, expected[1], rtol=0, atol=1e-7)


def test_dirac_init_starts_each_pair_as_one_convolution():
    """The second convolution of each pair (as many channels out as in) is the identity at the start; the first
    keeps its random weights."""
    network = build_network("fast", tiny(filters=(4, 8, 16)))
    prepare(network, tiny(init="dirac"))
    convs = [m for m in network.modules() if isinstance(m, nn.Conv2d)]
    square = [c for c in convs if c.in_channels == c.out_channels]
    assert len(square) == 3
    x = torch.rand(2, 8, 14, 14)
    conv = next(c for c in square if c.in_channels == 8)
    torch.testing.assert_close(conv(x), x)
    assert all(not torch.equal(c.weight, torch.nn.init.dirac_(torch.empty_like(c.weight))) for c in convs
               if c.in_channels != c.out_channels)


def test_batchnorm_settings_reach_every_batchnorm_layer(digits):
    """Momentum set on every BatchNorm; a frozen scale stays exactly 1 through training; the shifts learn at
    their own rate, in a group of their own."""
    cfg = tiny(bn_momentum=0.4, bn_scale=False, bn_bias_lr=64.0)
    training = build("fast", cfg, torch.device("cpu"), steps_per_epoch=8)
    norms = [m for m in training.network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and all(bn.momentum == 0.4 for bn in norms)
    groups = training.optimizer.param_groups
    assert len(groups) == 2 and {id(p) for p in groups[1]["params"]} == {id(bn.bias) for bn in norms}
    network, _ = fit("fast", cfg, *digits, torch.device("cpu"), progress=False)
    for bn in (m for m in network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)):
        assert torch.equal(bn.weight, torch.ones_like(bn.weight))
    peak = make_optimizer(cfg, build_network("fast", cfg)).param_groups
    assert peak[1]["lr"] == pytest.approx(cfg.lr * 64)


def test_the_triangle_schedule_is_straight_lines_up_then_down():
    cfg = tiny(schedule="triangle", epochs=4)
    optimizer = make_optimizer(cfg, build_network("fast", cfg))
    schedule = make_schedule(cfg, optimizer, steps_per_epoch=25)
    rates = []
    for _ in range(100):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    rates = np.array(rates)
    top = int(rates.argmax())
    assert 20 <= top <= 26 and rates[top] == pytest.approx(cfg.lr, rel=0.05)
    np.testing.assert_allclose(np.diff(rates[:top], 2), 0, atol=1e-9)     # straight up
    np.testing.assert_allclose(np.diff(rates[top:], 2), 0, atol=1e-9)     # straight down
    assert rates[-1] < cfg.lr * 0.02


def test_pool_first_runs_batchnorm_on_a_quarter_of_the_pixels():
    """With pool_first, each pooled stage's second BatchNorm sees the pooled maps (14x14, 7x7) instead of the
    full ones (28x28, 14x14); without it the network is the fast network as it always was (same weights' names)."""
    sizes = {}

    def record(name):
        return lambda module, inputs, output: sizes.setdefault(name, []).append(inputs[0].shape[-1])

    for pool_first in (False, True):
        network = build_network("fast", tiny(pool_first=pool_first)).eval()
        for index, module in enumerate(network.features):
            if isinstance(module, nn.BatchNorm2d):
                module.register_forward_hook(record((pool_first, index)))
        assert network(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    plain = [sizes[key][0] for key in sorted(k for k in sizes if not k[0])]
    pooled = [sizes[key][0] for key in sorted(k for k in sizes if k[0])]
    assert plain == [28, 28, 14, 14, 7, 7] and pooled == [28, 14, 14, 7, 7, 7]
    # The default keeps the layer positions that saved fast networks' weights are named by.
    state = build_network("fast", tiny(pool_first=False)).state_dict()
    assert [key for key, value in state.items() if value.dim() == 4] == [
        "features.0.weight", "features.3.weight", "features.7.weight", "features.10.weight", "features.14.weight",
        "features.17.weight"]


def test_muon_moves_each_filter_bank_by_an_orthogonalised_step_and_sgd_the_rest(digits):
    """With muon_lr the convolution filters after the first leave SGD for Muon: a bank's first step is
    -muon_lr times its gradient orthogonalised (every singular value near 1), while the first convolution and
    the other weights take plain SGD steps; Muon's rate follows the schedule at the ratio muon_lr / lr."""
    cfg = tiny(muon_lr=0.05, lr=0.1, weight_decay=0.0)
    training = build("fast", cfg, torch.device("cpu"), steps_per_epoch=8)
    network, optimizer = training.network, training.optimizer
    convs = [m for m in network.modules() if isinstance(m, nn.Conv2d)]
    in_sgd = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert id(convs[0].weight) in in_sgd and not any(id(c.weight) in in_sgd for c in convs[1:])
    before = [c.weight.detach().clone() for c in convs]
    x = torch.from_numpy(digits[0].images[:32]).float().div(255).reshape(-1, 1, 28, 28)
    torch.nn.functional.cross_entropy(network(x), torch.from_numpy(digits[0].labels[:32]).long()).backward()
    grads = [c.weight.grad.clone() for c in convs]
    rate = optimizer.param_groups[0]["lr"]  # the schedule's first value
    optimizer.step()
    for conv, old, grad in list(zip(convs, before, grads, strict=True))[1:]:
        step = (conv.weight.detach() - old).reshape(len(old), -1) / (-rate * 0.5)  # muon_lr / lr = 0.5
        singular = torch.linalg.svdvals(step)
        assert singular.min() > 0.3 and singular.max() < 1.6, singular  # orthogonalised: all near 1
        raw = grad.reshape(len(grad), -1)
        assert torch.nn.functional.cosine_similarity(step.flatten(), raw.flatten(), dim=0).abs() < 0.99  # not SGD's
    # SGD with Nesterov momentum m (the one-cycle schedule's, 0.95 at the start): the first step is (1 + m) times
    # the gradient
    momentum = optimizer.param_groups[0]["momentum"]
    torch.testing.assert_close(convs[0].weight.detach() - before[0], -rate * (1 + momentum) * grads[0])
    training.scheduler.step()
    optimizer.step()
    assert optimizer.muon.param_groups[0]["lr"] == pytest.approx(optimizer.param_groups[0]["lr"] * 0.5)


def test_muon_state_survives_a_checkpoint(digits):
    """The optimiser's checkpoint carries Muon's momentum: a copy restored after one step takes the same
    second step as the original."""
    cfg = tiny(muon_lr=0.05)
    x = torch.from_numpy(digits[0].images[:32]).float().div(255).reshape(-1, 1, 28, 28)
    y = torch.from_numpy(digits[0].labels[:32]).long()

    def step(training):
        torch.manual_seed(0)  # the same dropout for both
        training.optimizer.zero_grad()
        torch.nn.functional.cross_entropy(training.network(x), y).backward()
        training.optimizer.step()

    first = build("fast", cfg, torch.device("cpu"), steps_per_epoch=8)
    step(first)
    second = build("fast", cfg, torch.device("cpu"), steps_per_epoch=8)
    saved = io.BytesIO()
    torch.save(first.state(torch.device("cpu")), saved)  # as the run directory writes and reads a checkpoint
    state = torch.load(io.BytesIO(saved.getvalue()), weights_only=True)
    second.network.load_state_dict(state["network"])
    second.optimizer.load_state_dict(state["optimizer"])
    assert second.optimizer.muon.state and all("momentum_buffer" in s for s in second.optimizer.muon.state.values())
    step(first), step(second)
    for a, b in zip(first.network.parameters(), second.network.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_whitening_decorrelates_the_patches_and_stays_frozen(digits):
    """The first convolution's filters, set from the training images, give patches' responses that are
    uncorrelated with variance near 1 (lambda / (lambda + eps) for a direction of variance lambda), come in
    negated pairs, and do not move in training."""
    pixels = torch.from_numpy(digits[0].images)
    filters = whitening_filters(pixels, pairs=4, size=3)
    assert filters.shape == (8, 1, 3, 3)
    torch.testing.assert_close(filters[4:], -filters[:4])
    x = pixels.float().div(255).reshape(-1, 1, 28, 28)
    patches = torch.nn.functional.unfold(x, 3, padding=1).transpose(1, 2).reshape(-1, 9).double()
    responses = patches @ filters[:4].reshape(4, 9).T.double()
    moment = responses.T @ responses / len(responses)
    torch.testing.assert_close(moment - torch.diag(moment.diag()), torch.zeros(4, 4, dtype=torch.float64))
    assert ((moment.diag() > 0.9) & (moment.diag() <= 1)).all(), moment.diag()  # lambda / (lambda + eps)

    cfg = tiny(whiten=True)
    network, _ = fit("fast", cfg, *digits, torch.device("cpu"), progress=False)
    first = next(m for m in network.modules() if isinstance(m, nn.Conv2d))
    torch.testing.assert_close(first.weight.detach(), whitening_filters(pixels, pairs=2, size=3))
    assert not first.weight.requires_grad


def test_crop_looks_only_at_the_central_square():
    """With crop 24 the fast network sees the central 24x24 pixels: a change within the 2-pixel border leaves
    its output as it was, a change inside moves it, and its first convolution works on 24x24 maps."""
    network = build_network("fast", tiny(crop=24)).eval()
    seen = []
    network.features[0].register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape[-2:]))
    torch.manual_seed(0)
    x = torch.rand(3, 1, 28, 28)
    frame = torch.ones(28, 28, dtype=torch.bool)
    frame[2:-2, 2:-2] = False  # the whole 2-pixel frame, all four sides
    border, inner = torch.where(frame, 1 - x, x), x.clone()
    inner[:, :, 2, 2] = 1 - inner[:, :, 2, 2]
    with torch.no_grad():
        out = network(x)
        assert torch.equal(network(border), out)
        assert not torch.allclose(network(inner), out)
    assert seen[0] == (24, 24)
    whole = build_network("fast", tiny()).eval()  # crop 28: the border counts
    with torch.no_grad():
        assert not torch.allclose(whole(border), whole(x))
    with pytest.raises(ValueError, match="crop must be one of"):
        tiny(crop=26).validate()


def test_a_cropped_network_exports_to_onnx_and_predicts_as_it_does(small_data_dir, embedded, tmp_path):
    """The crop is part of the network, so the ONNX file takes whole 28x28 digits and predicts what PyTorch
    predicts."""
    out = tmp_path / "run"
    assert main(["train", "--train", str(small_data_dir / "train.csv"), "--model", "fast", *TINY_FLAGS,
                 "--crop", "24", "--out", str(out), "--quiet"]) == 0
    export_onnx(out, tmp_path / "m.onnx")
    images = embedded[1].images[:50]
    np.testing.assert_allclose(OnnxPredictor(tmp_path / "m.onnx")(images), TorchPredictor(out)(images), atol=1e-4)
