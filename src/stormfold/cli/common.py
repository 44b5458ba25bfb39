"""What every command group shares: argument types, the one-line-error parser, the camera
options and frame ranges."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stormfold.errors import UserError


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line and exit code 2."""

    def error(self, message: str) -> None:  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message}\n")


def float_list(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def add_camera_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("camera (ADU → photons; default: movie metadata, else the "
                             "model's training camera, with a warning)")
    g.add_argument("--camera", type=Path, default=None, metavar="CAMERA.yaml",
                   help="camera parameters (or a simulation.yaml with a camera section)")
    g.add_argument("--baseline", type=float, default=None, metavar="ADU",
                   help="camera offset (ThunderSTORM: base level; Picasso: Baseline)")
    g.add_argument("--e-per-adu", type=positive_float, default=None, metavar="X",
                   help="e_per_adu: photoelectrons per ADU (ThunderSTORM: photoelectrons per "
                        "A/D count; Picasso: Sensitivity)")
    g.add_argument("--em-gain", type=positive_float, default=None, metavar="G",
                   help="EM gain (1 for sCMOS/CCD)")
    g.add_argument("--qe", type=positive_float, default=None, metavar="Q", help="quantum efficiency")


def camera_overrides(args: argparse.Namespace):
    """The camera options as :class:`~stormfold.localize.camera.CameraOverrides` (checked)."""
    from stormfold.localize.camera import CameraOverrides

    return CameraOverrides(args.camera, args.baseline, args.e_per_adu, args.em_gain,
                           args.qe).check()


def frame_range(text: str | None) -> tuple[int, int | None]:
    if text is None:
        return 0, None
    try:
        a, b = text.split(":")
        return (int(a) if a else 0), (int(b) if b else None)
    except ValueError:
        raise UserError(f"--frames expects A:B (0-based, B exclusive), got {text!r}") from None


def command_line() -> list[str]:
    """The command as typed (for provenance in run.yaml and model.yaml)."""
    return ["stormfold", *sys.argv[1:]]
