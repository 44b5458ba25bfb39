"""What every command group shares: argument types, the one-line-error parser, the camera
options and frame ranges."""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from stormfold.errors import UserError


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line and exit code 2."""

    def error(self, message: str) -> None:  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message}\n")


def output_path(text: str) -> Path:
    """An output file or folder; an empty path is refused (it would mean the current folder,
    which the user did not name)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty path: give the file or folder to write")
    return Path(text)


def float_list(text: str) -> list[float]:
    """Comma-separated finite numbers."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated finite numbers, got {text!r}")
    return values


def positive_list(text: str) -> list[float]:
    """Comma-separated positive finite numbers (radii, sizes)."""
    values = float_list(text)
    if not all(v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive numbers, got {text!r}")
    return values


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


def finite_float(text: str) -> float:
    """A finite number (``inf`` and ``nan`` are refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A positive, finite number."""
    value = finite_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value:g}")
    return value


def nonneg_float(text: str) -> float:
    """A finite number ≥ 0."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number ≥ 0, got {value:g}")
    return value


def add_camera_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("camera (ADU → photons; default: movie metadata, else the "
                             "model's training camera, with a warning)")
    g.add_argument("--camera", type=Path, default=None, metavar="CAMERA.yaml",
                   help="camera parameters (or a simulation.yaml with a camera section)")
    g.add_argument("--baseline", type=finite_float, default=None, metavar="ADU",
                   help="camera offset (ThunderSTORM: base level; Picasso: Baseline)")
    g.add_argument("--e-per-adu", type=positive_float, default=None, metavar="X",
                   help="e_per_adu: photoelectrons per ADU (ThunderSTORM: photoelectrons per "
                        "A/D count; Picasso: Sensitivity)")
    g.add_argument("--em-gain", type=positive_float, default=None, metavar="G",
                   help="EM gain (1 for sCMOS/CCD)")
    g.add_argument("--qe", type=positive_float, default=None, metavar="Q", help="quantum efficiency")
    g.add_argument("--read-noise", type=nonneg_float, default=None, metavar="E",
                   help="read noise, e⁻ rms (readout_e; the noise model of the classic fit and "
                        "gridnet's refinement; default 0 unless a camera file gives it)")


def camera_overrides(args: argparse.Namespace):
    """The camera options as :class:`~stormfold.localize.camera.CameraOverrides` (checked)."""
    from stormfold.localize.camera import CameraOverrides

    return CameraOverrides(args.camera, args.baseline, args.e_per_adu, args.em_gain,
                           args.qe, getattr(args, "read_noise", None)).check()


def frame_range(text: str | None) -> tuple[int, int | None]:
    """``--frames A:B`` → ``(A, B or None)`` (a UserError for a malformed, negative or empty
    range; the movie's length is checked when it is open)."""
    from stormfold.io.frame_range import parse_frame_range

    return parse_frame_range(text, "--frames")


def camera_pixel_size(text: str) -> float:
    """``--pixel-size``: a camera pixel size in nm, 10–2000."""
    from stormfold.io.metadata import check_camera_pixel_size

    try:
        return check_camera_pixel_size(float(text), "--pixel-size")
    except (ValueError, UserError) as exc:
        raise argparse.ArgumentTypeError(str(exc).split(": ", 1)[-1] if isinstance(
            exc, UserError) else f"expected a number of nm, got {text!r}") from None


def add_movie_options(p: argparse.ArgumentParser) -> None:
    """How a movie is read: NaN/Inf pixels and the plane of a stack of more than 3 dimensions."""
    g = p.add_argument_group("movie reading")
    g.add_argument("--nan-policy", choices=["error", "zero", "median"], default="error",
                   help="NaN/Inf pixels: an error (default), or replaced by their frame's "
                        "median (its background; best for SOFI) or by 0, and counted")
    g.add_argument("--axes", default=None, metavar="AXES",
                   help="dimensions of a TIFF of more than 3, e.g. TZYX (letters T, Z, C, Y, X)")
    g.add_argument("--z", type=nonneg_int, default=None, metavar="I",
                   help="focal plane to read from a stack with a Z axis (0-based)")
    g.add_argument("--channel", type=nonneg_int, default=None, metavar="I",
                   help="channel to read from a stack with a C axis (0-based)")


def movie_options(args: argparse.Namespace) -> dict:
    """The reading options of :func:`add_movie_options` as keyword arguments of
    :func:`stormfold.io.movie.open_movie`."""
    return {"nan_policy": args.nan_policy, "axes": args.axes, "z": args.z,
            "channel": args.channel}


def repairs_line(repairs: dict | None) -> str:
    """The NaN/Inf repair count for stdout ("" when nothing was repaired)."""
    if not repairs:
        return ""
    how = "their frame's median" if repairs["nan_policy"] == "median" else "0"
    return (f"; replaced {repairs['pixels_replaced']} NaN/Inf pixels by {how} in "
            f"{repairs['frames_repaired']} frames (--nan-policy {repairs['nan_policy']})")


def command_line() -> list[str]:
    """The command as typed (for provenance in run.yaml and model.yaml)."""
    return ["stormfold", *sys.argv[1:]]
