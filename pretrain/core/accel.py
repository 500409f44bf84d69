"""Accelerators and FLOPs, written once: the dense peak table, device-name matching, the --gpu names
the planner offers, the training FLOP formula and MFU. The planner and the trainer's MFU both use it.

    peak_flops_for_name("NVIDIA H100 80GB HBM3", "bf16")    # 989.4e12
    flops_per_token(num_matmul_params=n, num_layers=12, dim=768, seq_len=1024)
    mfu(flops_per_token, tokens_per_s, peak, num_devices)

No torch at import; `_precision` imports it only when handed a torch dtype.
"""

from __future__ import annotations

import logging
import re
from typing import Any

log = logging.getLogger(__name__)

# Dense (no 2:4 sparsity) peak tensor-core FLOP/s per GPU. Datasheets print the sparse figure
# with an asterisk; the dense figure is half of it. fp16 equals bf16 on every part listed.
# "fp32" is the non-tensor-core rate (torch.set_float32_matmul_precision("highest")); "tf32" is what
# fp32 matmuls get with the default-off TF32 switch turned on.
PEAK_FLOPS: dict[str, dict[str, float]] = {
    # NVIDIA H100 datasheet (nvidia.com/en-us/data-center/h100): SXM BF16 1,979 sparse, TF32 989
    # sparse, FP32 67; PCIe BF16 1,513 sparse, TF32 756 sparse, FP32 51; NVL BF16 1,671 sparse, FP32 60.
    "H100 SXM": {"bf16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12},
    "H100 PCIe": {"bf16": 756e12, "tf32": 378e12, "fp32": 51.2e12},
    "H100 NVL": {"bf16": 835.5e12, "tf32": 417.5e12, "fp32": 60e12},
    # NVIDIA H200 datasheet (nvidia.com/en-us/data-center/h200): SXM same tensor rates as H100 SXM
    # (BF16 1,979 sparse), FP32 67; H200 NVL BF16 1,671 sparse, FP32 60. GH200 = H100 SXM rates.
    "H200": {"bf16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12},
    "H200 NVL": {"bf16": 835.5e12, "tf32": 417.5e12, "fp32": 60e12},
    # NVIDIA H800 (China export part) datasheet: the H100's tensor and FP32 rates (SXM BF16 1,979
    # sparse, TF32 989 sparse, FP32 67; PCIe as H100 PCIe); only NVLink bandwidth is cut.
    "H800 SXM": {"bf16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12},
    "H800 PCIe": {"bf16": 756e12, "tf32": 378e12, "fp32": 51.2e12},
    # NVIDIA H20 datasheet: FP16/BF16 148 dense (296 sparse), TF32 74 dense, FP32 44; 96 GB HBM3.
    "H20": {"bf16": 148e12, "tf32": 74e12, "fp32": 44e12},
    # NVIDIA A100 datasheet (nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf): BF16 312,
    # TF32 156, FP32 19.5 dense; the same for 40/80 GB and SXM4/PCIe.
    "A100": {"bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
    # NVIDIA A800 datasheet: the A100's compute rates (BF16 312, TF32 156, FP32 19.5 dense).
    "A800": {"bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
    # NVIDIA L4 datasheet: BF16 242 sparse, TF32 120 sparse, FP32 30.3.
    "L4": {"bf16": 121e12, "tf32": 60e12, "fp32": 30.3e12},
    # NVIDIA L40S datasheet: BF16 362.05 dense (733 sparse), TF32 183 dense, FP32 91.6.
    "L40S": {"bf16": 362.05e12, "tf32": 183e12, "fp32": 91.6e12},
    # NVIDIA A10 datasheet: BF16 125 dense (250 sparse), TF32 62.5 dense, FP32 31.2.
    "A10": {"bf16": 125e12, "tf32": 62.5e12, "fp32": 31.2e12},
    # A10G (AWS G5) has no NVIDIA datasheet: 80 SMs with GeForce-rate (half) fp32-accumulate tensor
    # cores, the commonly quoted ~70 TFLOPS BF16 dense and ~35 TFLOPS FP32. Least certain row here.
    "A10G": {"bf16": 70e12, "tf32": 35e12, "fp32": 35e12},
    # NVIDIA Ada Lovelace architecture whitepaper (RTX 4090): FP16/BF16 tensor with FP32 accumulate
    # 165.2 dense (330.3 is with FP16 accumulate or sparsity), TF32 82.6 dense, FP32 82.6.
    "RTX 4090": {"bf16": 165.2e12, "tf32": 82.6e12, "fp32": 82.6e12},
    # NVIDIA HGX B200 datasheet, 8 GPUs: FP16/BF16 36 PFLOPS sparse, TF32 18 PFLOPS sparse,
    # FP32 600 TFLOPS -> per GPU 2.25 PF / 1.125 PF dense / 75 TF (GB200 parts run faster clocks).
    "B200": {"bf16": 2.25e15, "tf32": 1.125e15, "fp32": 75e12},
    # NVIDIA HGX B100 (700 W), 8 GPUs: FP16/BF16 28 PFLOPS sparse, TF32 14 PFLOPS sparse, FP32 480
    # TFLOPS -> per GPU 1.75 PF / 0.875 PF dense / 60 TF; 192 GB HBM3e per GPU.
    "B100": {"bf16": 1.75e15, "tf32": 0.875e15, "fp32": 60e12},
    # NVIDIA GB200 NVL72 datasheet, per Blackwell GPU (1,200 W): FP16/BF16 5 PF sparse (2.5 dense),
    # TF32 2.5 PF sparse (1.25 dense), FP32 90 TF (NVL72: 5,760 TF / 72 = 80 at the rack's clocks;
    # we take the rack figure); 186 GB HBM3e per GPU (13.4 TB / 72).
    "GB200": {"bf16": 2.5e15, "tf32": 1.25e15, "fp32": 80e12},
    # AMD Instinct MI300X datasheet: BF16/FP16 1,307.4 dense (2,614.9 sparse), TF32 653.7, FP32
    # matrix 163.4; 192 GB HBM3. MI325X: the same compute rates, 256 GB HBM3E.
    "MI300X": {"bf16": 1307.4e12, "tf32": 653.7e12, "fp32": 163.4e12},
    "MI325X": {"bf16": 1307.4e12, "tf32": 653.7e12, "fp32": 163.4e12},
}

# torch.cuda.get_device_name() -> table key; first match wins, so specific names come first.
# Examples: "NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA H200", "NVIDIA A100-SXM4-80GB",
# "NVIDIA A100 80GB PCIe", "NVIDIA L40S", "NVIDIA A10G", "NVIDIA GeForce RTX 4090", "NVIDIA B200".
# "NVIDIA H800", "NVIDIA H20", "NVIDIA A800-SXM4-80GB", "NVIDIA GB200", "NVIDIA B100",
# "AMD Instinct MI300X" (ROCm torch reports AMD parts through torch.cuda too).
_NAME_PATTERNS: list[tuple[str, str]] = [
    (r"H800.*PCIe", "H800 PCIe"),
    (r"H800", "H800 SXM"),
    (r"\bH20\b", "H20"),
    (r"A800", "A800"),
    (r"GB200", "GB200"),
    (r"\bB100", "B100"),
    (r"MI325X", "MI325X"),
    (r"MI300X", "MI300X"),
    (r"H100.*NVL", "H100 NVL"),
    (r"H100.*PCIe", "H100 PCIe"),
    (r"GH200", "H100 SXM"),
    (r"H200.*NVL", "H200 NVL"),
    (r"H200", "H200"),
    (r"H100", "H100 SXM"),
    (r"A100", "A100"),
    (r"L40S", "L40S"),
    (r"\bL4\b", "L4"),
    (r"A10G", "A10G"),
    (r"\bA10\b", "A10"),
    (r"RTX 4090", "RTX 4090"),
    (r"\bB200", "B200"),
]
_warned: set[str] = set()

# --gpu name -> (PEAK_FLOPS key, memory in datasheet GB). torch reports a little
# less than the datasheet figure in GiB (firmware/ECC reserve), which --usable-fraction absorbs.
GPUS: dict[str, tuple[str, float]] = {
    "h100": ("H100 SXM", 80),
    "h100-pcie": ("H100 PCIe", 80),
    "h100-nvl": ("H100 NVL", 94),
    "h200": ("H200", 141),
    "h200-nvl": ("H200 NVL", 141),
    "gh200": ("H100 SXM", 96),  # GH200's GPU: H100 SXM rates, 96 GB HBM3 (144 GB HBM3e version: gh200-144gb)
    "gh200-144gb": ("H100 SXM", 144),
    "h800": ("H800 SXM", 80),
    "h800-pcie": ("H800 PCIe", 80),
    "h20": ("H20", 96),
    "a800": ("A800", 80),
    "a800-40gb": ("A800", 40),
    "a100": ("A100", 80),
    "a100-40gb": ("A100", 40),
    "l40s": ("L40S", 48),
    "l4": ("L4", 24),
    "a10": ("A10", 24),
    "a10g": ("A10G", 24),
    "rtx4090": ("RTX 4090", 24),
    "b200": ("B200", 180),
    "b100": ("B100", 192),
    "gb200": ("GB200", 186),
    "mi300x": ("MI300X", 192),
    "mi325x": ("MI325X", 256),
}


def flops_per_token(
    num_matmul_params: int, num_layers: int, dim: int, seq_len: int, causal: bool = False
) -> int:
    """Training FLOPs per token (forward + backward), the PaLM / nanoGPT / torchtitan convention:

    6 * N + 12 * num_layers * dim * seq_len, where N = the parameters that take part in a matmul
    (non-embedding params + the lm_head's vocab * dim; the embedding lookup costs no FLOPs) and the
    second term is QK^T and AV (2 matmuls * 2 FLOPs * seq_len * dim per layer forward, x3 for
    backward), counted over the full T x T square even though causal kernels skip half of it.
    `causal=True` counts the half a causal kernel computes (6 * num_layers * dim * seq_len): the
    work actually done, reported beside the convention's figure as `mfu_causal`.
    """
    attention = 6 if causal else 12
    return 6 * num_matmul_params + attention * num_layers * dim * seq_len


def _precision(dtype: Any) -> str:
    """bf16 | fp16 | tf32 | fp32 from a string or torch dtype (torch.float32 follows the TF32 switch)."""
    if isinstance(dtype, str):
        key = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32"}.get(dtype, dtype)
    else:
        import torch  # only when handed a torch dtype

        if dtype == torch.float32:
            return "fp32" if torch.get_float32_matmul_precision() == "highest" else "tf32"
        key = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))
    if key not in ("bf16", "fp16", "tf32", "fp32"):
        raise ValueError(f"dtype={dtype!r}: expected one of bf16, fp16, tf32, fp32 or a torch float dtype")
    return key


def peak_flops_for_name(device_name: str, dtype: Any = "bf16") -> float | None:
    """Dense peak FLOP/s of one device named like torch.cuda.get_device_name(); None if unknown."""
    precision = _precision(dtype)
    for pattern, key in _NAME_PATTERNS:
        if re.search(pattern, device_name):
            return PEAK_FLOPS[key]["bf16" if precision == "fp16" else precision]
    if device_name not in _warned:
        _warned.add(device_name)
        log.warning("metrics: no peak-FLOPs entry for device %r; MFU will not be reported", device_name)
    return None


def mfu(
    flops_per_token: float, tokens_per_s: float, peak_flops: float | None, num_devices: int = 1
) -> float | None:
    """Model FLOPs utilisation in [0, 1]: achieved / peak. `tokens_per_s` is the throughput over all
    `num_devices` together; None when the peak is unknown (CPU, unlisted GPU)."""
    if peak_flops is None or peak_flops <= 0:
        return None
    return flops_per_token * tokens_per_s / (peak_flops * num_devices)
