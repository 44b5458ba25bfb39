"""Localization tables and images as napari layer data, and back (no Qt needed).

Coordinates. stormfold puts the centre of camera pixel (r, c) at ((c+0.5)·px, (r+0.5)·px)
nm (SPEC §1); napari puts the centre of data pixel (r, c) at (r, c)·scale + translate in
world coordinates. A movie layer opened here gets scale px and translate px/2, so its world
coordinates are nm and a Points layer whose data are (frame, y_nm, x_nm) overlays it with
the identity transform. A movie layer opened by another reader (scale 1, translate 0, world
in camera pixels) is matched instead: :class:`WorldFrame` gives every layer made from it the
scale and translate that put a position of ``u`` nm where the movie shows it. The data of a
Points layer are therefore always nm, whatever the movie's world units.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from stormfold.errors import UserError
from stormfold.table import INTENSITY_AU, make_table, validate_table

#: Table columns every Points layer made here carries as features (when the table has them).
FEATURES = ("frame", "photons", INTENSITY_AU, "uncertainty_nm", "confidence")
#: Key of the layer metadata this plugin reads and writes.
META_KEY = "stormfold"


@dataclass(frozen=True)
class WorldFrame:
    """How a movie layer maps camera pixels to napari world coordinates.

    Attributes
    ----------
    pixel_size_nm : float
        Camera pixel size (nm).
    scale, translate : tuple of 3 floats
        The movie layer's scale and translate along (frame, row, column).
    """

    pixel_size_nm: float
    scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    translate: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @classmethod
    def nm(cls, pixel_size_nm: float) -> "WorldFrame":
        """World in nm: the layout of movies opened or simulated by this plugin."""
        px = float(pixel_size_nm)
        return cls(px, (1.0, px, px), (0.0, px / 2, px / 2))

    @classmethod
    def of_layer(cls, layer: Any, pixel_size_nm: float) -> "WorldFrame":
        """The frame of an image layer of 2 (one frame) or 3 dimensions."""
        scale = [float(v) for v in layer.scale][-3:]
        translate = [float(v) for v in layer.translate][-3:]
        while len(scale) < 3:
            scale.insert(0, 1.0)
            translate.insert(0, 0.0)
        return cls(float(pixel_size_nm), tuple(scale), tuple(translate))

    def points_transform(self) -> dict[str, tuple]:
        """``scale``/``translate`` of a Points layer with data (frame, y_nm, x_nm).

        A position u nm is data index u/px − 0.5 of the movie, at world
        (u/px − 0.5)·s + t = u·(s/px) + (t − s/2).
        """
        s, t, px = self.scale, self.translate, self.pixel_size_nm
        return {"scale": (s[0], s[1] / px, s[2] / px),
                "translate": (t[0], t[1] - s[1] / 2, t[2] - s[2] / 2)}

    def image_transform(self, image_pixel_nm: float) -> dict[str, tuple]:
        """``scale``/``translate`` of a 2-D image whose pixel (i, j) covers
        [j·p, (j+1)·p) × [i·p, (i+1)·p) nm (a rendering or a fine-grid image).

        Its centre (j + 0.5)·p nm is at world (j + 0.5)·p·s/px + t − s/2.
        """
        s, t, px, p = self.scale, self.translate, self.pixel_size_nm, float(image_pixel_nm)
        return {"scale": (p * s[1] / px, p * s[2] / px),
                "translate": (t[1] + s[1] * (p / px - 1) / 2, t[2] + s[2] * (p / px - 1) / 2)}


def table_to_points(table: pd.DataFrame, name: str, pixel_size_nm: float | None = None,
                    world: WorldFrame | None = None, metadata: dict | None = None,
                    color: str = "#ffcc00") -> tuple[np.ndarray, dict, str]:
    """A napari Points layer tuple ``(data, kwargs, "points")`` for a localization table.

    Parameters
    ----------
    table : pandas.DataFrame
        Localization table (nm, 0-based frames).
    name : str
        Layer name.
    pixel_size_nm : float, optional
        Camera pixel size (nm): sets the point size and is kept in the metadata (the
        writer needs it for Picasso files).
    world : WorldFrame, optional
        The movie the points belong to (default: world in nm).
    metadata : dict, optional
        More entries for ``metadata["stormfold"]``.
    color : str
        Outline colour.

    Returns
    -------
    data : (n, 3) float64 array of (frame, y_nm, x_nm)
    kwargs : dict
        ``features`` (every table column but x_nm, y_nm), ``metadata``, transform, style.
    """
    table = validate_table(table)
    data = np.column_stack([table["frame"].to_numpy(np.float64), table["y_nm"].to_numpy(),
                            table["x_nm"].to_numpy()]) if len(table) else np.zeros((0, 3))
    features = table.drop(columns=["x_nm", "y_nm"]).reset_index(drop=True)
    features = features[[c for c in FEATURES if c in features.columns]
                        + [c for c in features.columns if c not in FEATURES]]
    px = None if pixel_size_nm is None else float(pixel_size_nm)
    meta = {"pixel_size_nm": px, **(metadata or {})}
    kwargs: dict[str, Any] = {
        "name": name, "features": features, "metadata": {META_KEY: meta},
        # A ring half a camera pixel wide: visible on the movie, small on a rendering.
        "size": 0.5 * px if px else 50.0, "face_color": "transparent", "border_color": color,
        "border_width": 0.15, "symbol": "ring", "out_of_slice_display": False,
    }
    if world is not None:
        kwargs.update(world.points_transform())
    return data, kwargs, "points"


def points_to_table(data: np.ndarray, features: pd.DataFrame | None = None) -> pd.DataFrame:
    """The localization table of a Points layer made by :func:`table_to_points`.

    Parameters
    ----------
    data : (n, 2) or (n, 3) array
        (y_nm, x_nm) or (frame, y_nm, x_nm); more leading axes are refused.
    features : pandas.DataFrame, optional
        Per-point columns; numeric ones become table columns (``frame`` from here when
        the data are 2-D, else 0).
    """
    data = np.asarray(data, dtype=np.float64)
    if data.ndim != 2 or data.shape[1] not in (2, 3):
        raise UserError(f"a Points layer of localizations has 2 (y, x) or 3 (frame, y, x) "
                        f"coordinates per point, got data of shape {data.shape}")
    features = pd.DataFrame() if features is None else pd.DataFrame(features).reset_index(drop=True)
    columns = {c: features[c].to_numpy() for c in features.columns
               if c not in ("frame", "x_nm", "y_nm") and pd.api.types.is_numeric_dtype(features[c])}
    if data.shape[1] == 3:
        frame = data[:, 0]
    elif "frame" in features.columns:
        frame = features["frame"].to_numpy(np.float64)
    else:
        frame = np.zeros(len(data))
    if len(frame) and (np.any(frame < 0) or np.any(frame != np.round(frame))):
        raise UserError("the frame coordinate of the points must be whole numbers ≥ 0")
    return make_table(np.round(frame).astype(np.int64), data[:, -1], data[:, -2], **columns)


def movie_layer_kwargs(name: str, pixel_size_nm: float | None,
                       metadata: dict | None = None) -> dict[str, Any]:
    """Image-layer kwargs of a movie in the nm world of :meth:`WorldFrame.nm`
    (or in camera pixels when the pixel size is unknown)."""
    kwargs: dict[str, Any] = {"name": name, "colormap": "gray",
                              "metadata": {META_KEY: {"pixel_size_nm": pixel_size_nm,
                                                      **(metadata or {})}}}
    if pixel_size_nm is not None:
        world = WorldFrame.nm(pixel_size_nm)
        kwargs.update(scale=world.scale, translate=world.translate)
    return kwargs


def stormfold_metadata(layer: Any) -> dict:
    """The ``metadata["stormfold"]`` entries of a layer (empty for other layers)."""
    meta = getattr(layer, "metadata", None) or {}
    value = meta.get(META_KEY) if isinstance(meta, dict) else None
    return dict(value) if isinstance(value, dict) else {}


def contrast_limits(image: np.ndarray, percentile: float = 99.5) -> Sequence[float]:
    """Display range of a sparse rendering: 0 to a high percentile of the non-empty pixels."""
    values = image[image > 0]
    top = float(np.percentile(values, percentile)) if values.size else 1.0
    return (0.0, max(top, 1e-12))
