"""The geometry of camera frames and of their fine (super-resolution) grid (SPEC §1).

One object carries what every stage needs to turn pixels into nanometres: the frame size,
the camera pixel size and the upsampling factor L. Coordinates follow SPEC §1: x along
columns, y along rows, origin at the top-left *corner* of pixel (0, 0), so camera pixel
(r, c) has its centre at ((c + ½)·px, (r + ½)·px) and fine pixel (r, c) at
((c + ½)·px/L, (r + ½)·px/L).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from stormfold.errors import UserError


def fine_pixel_index(pos_nm: Any, pixel_size_nm: float, upsampling: int = 1) -> np.ndarray:
    """0-based index of the (fine) pixel containing each position: ⌊pos·L/px⌋ (int64).

    With ``upsampling`` 1 this is the camera pixel (or the pixel of any grid of pitch
    ``pixel_size_nm``). Multiplying by L before dividing keeps the rounding of the camera
    and fine grids consistent: ⌊fine / L⌋ is always the camera pixel.
    """
    scaled = np.asarray(pos_nm, dtype=np.float64) * upsampling / pixel_size_nm
    return np.floor(scaled).astype(np.int64)


@dataclass(frozen=True)
class FrameGeometry:
    """Frame size, camera pixel size and fine-grid factor.

    Attributes
    ----------
    rows, cols : int
        Frame size in camera pixels.
    pixel_size_nm : float
        Camera pixel size in the sample plane (nm).
    upsampling : int
        Fine-grid factor L (1: the camera grid itself).
    """

    rows: int
    cols: int
    pixel_size_nm: float
    upsampling: int = 1

    def __post_init__(self) -> None:
        if int(self.rows) < 1 or int(self.cols) < 1:
            raise UserError(f"frame size must be at least 1×1 pixels, got {self.rows}×{self.cols}")
        px = float(self.pixel_size_nm)
        if not (math.isfinite(px) and px > 0):
            raise UserError(f"pixel size must be a positive number of nm, got {self.pixel_size_nm}")
        if int(self.upsampling) != self.upsampling or self.upsampling < 1:
            raise UserError(f"upsampling must be a positive integer, got {self.upsampling}")
        object.__setattr__(self, "rows", int(self.rows))
        object.__setattr__(self, "cols", int(self.cols))
        object.__setattr__(self, "pixel_size_nm", px)
        object.__setattr__(self, "upsampling", int(self.upsampling))

    @classmethod
    def of_frames(cls, frames: Any, pixel_size_nm: float, upsampling: int = 1) -> "FrameGeometry":
        """The geometry of an array of frames (..., rows, cols)."""
        shape = np.shape(frames)
        return cls(shape[-2], shape[-1], pixel_size_nm, upsampling)

    # ------------------------------------------------------------------ sizes
    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) in camera pixels."""
        return self.rows, self.cols

    @property
    def fine_shape(self) -> tuple[int, int]:
        """(rows·L, cols·L): the fine grid."""
        return self.rows * self.upsampling, self.cols * self.upsampling

    @property
    def fine_pixel_nm(self) -> float:
        """Fine pixel size px / L (nm)."""
        return self.pixel_size_nm / self.upsampling

    @property
    def fov_nm(self) -> tuple[float, float]:
        """Field of view (width, height) in nm: (cols·px, rows·px)."""
        return self.cols * self.pixel_size_nm, self.rows * self.pixel_size_nm

    def upsampled(self, upsampling: int) -> "FrameGeometry":
        """The same frames with fine-grid factor ``upsampling``."""
        return replace(self, upsampling=upsampling)

    # ------------------------------------------------------------------ nm ↔ pixels
    def fine_index(self, pos_nm: Any) -> np.ndarray:
        """Index of the fine pixel containing each position (nm): ⌊pos·L/px⌋."""
        return fine_pixel_index(pos_nm, self.pixel_size_nm, self.upsampling)

    def camera_index(self, pos_nm: Any) -> np.ndarray:
        """Index of the camera pixel containing each position (nm): ⌊pos/px⌋."""
        return fine_pixel_index(pos_nm, self.pixel_size_nm)

    def fine_px_to_nm(self, pos_fine_px: Any) -> Any:
        """Fine-grid coordinates (corner origin, so pixel i's centre is i + ½) → nm."""
        return pos_fine_px * self.fine_pixel_nm

    def fine_center_nm(self, index: Any) -> np.ndarray:
        """Centre (nm) of fine pixel ``index``: (index + ½)·px/L."""
        return (np.asarray(index, dtype=np.float64) + 0.5) * self.fine_pixel_nm

    def inside(self, x_nm: Any, y_nm: Any) -> np.ndarray:
        """True where (x, y) lies inside the field of view [0, W) × [0, H)."""
        width, height = self.fov_nm
        x, y = np.asarray(x_nm), np.asarray(y_nm)
        return (x >= 0) & (x < width) & (y >= 0) & (y < height)

    def describe(self) -> dict[str, Any]:
        """Plain values for run records."""
        return {"frame_shape": [self.rows, self.cols], "pixel_size_nm": self.pixel_size_nm,
                "upsampling": self.upsampling, "fine_pixel_nm": self.fine_pixel_nm}
