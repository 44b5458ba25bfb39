"""The one place where the compute device is chosen."""
from __future__ import annotations

import torch

from stormfold.errors import UserError


def get_device(name: str | None = None) -> torch.device:
    """Return the torch device to run on.

    Parameters
    ----------
    name : {None, "auto", "cpu", "cuda", "cuda:N"}
        ``None`` or ``"auto"`` picks CUDA when it is available, else the CPU.
    """
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"device {name!r} requested but CUDA is not available on this machine")
        return torch.device(name)
    raise UserError(f"unknown device {name!r}: use cpu, cuda or auto")
