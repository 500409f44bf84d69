"""Device resolution shared by the trainer and eval: "auto" means CUDA when present, else CPU.

resolve_device("auto")   # torch.device("cuda") on a GPU machine, torch.device("cpu") otherwise
"""

from __future__ import annotations

import torch


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
