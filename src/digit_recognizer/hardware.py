"""What the hardware computes fast: the arithmetic a network trains and predicts in, by device and setting."""

from __future__ import annotations

import functools

import torch


@functools.cache  # asked every epoch; the CPU does not change
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX): there, autocast to it speeds training
    up (1.5-1.7x measured on a 2-core AMD EPYC); on others it slows it down."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            flags = next((line for line in handle if line.startswith("flags")), "").split()
    except OSError:  # not Linux: no way to tell, so no
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cuda_has_bf16(device: torch.device) -> bool:
    """Whether the GPU computes bfloat16 natively (compute capability 8.0 and later: A100, H100, RTX 30xx...);
    older cards (Kaggle's P100 and T4) only emulate it, slowly."""
    return torch.cuda.get_device_capability(device) >= (8, 0)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype to autocast to for a :class:`~digit_recognizer.config.TrainConfig` ``precision`` on ``device``,
    or None for float32. On a GPU, "auto" and "native" pick bfloat16 where the card has it and float16 (with a
    gradient scaler in training) where it does not; on a CPU, "native" picks bfloat16 where the hardware has it,
    "auto" float32; "bf16" and "fp32" force."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if cuda_has_bf16(device) else torch.float16
    return torch.bfloat16 if precision == "native" and cpu_has_bf16() else None
