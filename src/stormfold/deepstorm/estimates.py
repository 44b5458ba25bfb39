"""Intensity and uncertainty *estimates* for Deep-STORM localizations.

Deep-STORM predicts where emitters are; it measures neither their brightness nor how well
each one is placed. Both are therefore estimated from the prediction and calibrated once,
on frames simulated exactly like the model's training data (``training_data.simulation``
of ``model.yaml``, a new seed), against the known truth:

``photons`` (ThunderSTORM ``intensity [photon]``, Picasso ``photons``)
    The *integrated prediction* m of a localization — the sum of the clamped network output
    over the ``window_fine_px`` × ``window_fine_px`` fine pixels centred on its local
    maximum, divided by ``target_scale`` — mapped to photons by a monotone table: the
    calibration localizations matched to the truth are cut into quantile bins of m, each
    bin gives (median m, median true photons), the medians are made non-decreasing in m
    (isotonic regression weighted by the bin counts) and the table is interpolated
    linearly, constant beyond its ends.

``uncertainty_nm`` (ThunderSTORM ``uncertainty [nm]``, Picasso ``lpx``/``lpy``)
    The per-axis root-mean-square error √(mean((dx² + dy²)/2)) of the matched calibration
    localizations as a function of their ``confidence``: quantile bins of the confidence
    give (median confidence, mean squared error per axis), the mean squared errors are made
    non-increasing in the confidence (isotonic regression weighted by the counts), and the
    table of square roots is interpolated linearly, constant beyond its ends.

Both are estimates of the model's average behaviour on its training distribution, not
measurements on the user's data: the photons carry only what the network's output says
about brightness (record ``photons.correlation``: for a model trained on a narrow photon
range the estimate stays near the training mean), and the uncertainty is only as right as
the training simulation is for the movie (camera, PSF, density). ``run.yaml`` lists them
under ``columns_estimated``; the Picasso sidecar says so too.

Calibration runs at the end of ``stormfold train deepstorm`` (on the threshold-calibration
frames) and, for an existing model, with ``python -m stormfold.deepstorm.calibrate MODEL``
(:func:`stormfold.deepstorm.calibrate.calibrate_model`), which rewrites ``model.yaml`` only (weights unchanged).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from stormfold.errors import UserError

#: Default side (fine pixels) of the window integrated for the photons estimate: ±3 σ of
#: the training targets (Gaussians of σ = 1 fine pixel).
DEFAULT_WINDOW_FINE_PX = 7
#: Matched localizations per calibration bin (at least) and at most this many bins.
MIN_PER_BIN = 50
MAX_BINS = 12
#: Fewer matched localizations than this: no estimates (the columns are then omitted).
MIN_MATCHES = 20
COLUMNS = {
    "photons": "Deep-STORM estimate: integrated prediction mapped to photons on the model's "
               "training simulation (model.yaml estimates.photons)",
    "uncertainty_nm": "Deep-STORM estimate: per-axis RMSE of the training simulation's "
                      "localizations at this confidence (model.yaml estimates.uncertainty_nm)",
}


@dataclass
class DeepStormEstimates:
    """Calibrated look-up tables turning a detection into photons and an uncertainty.

    Attributes
    ----------
    window_fine_px : int
        Odd side of the integration window in fine pixels.
    photons_table : list of (integrated prediction, photons)
        Increasing in the first entry, non-decreasing in the second.
    uncertainty_table : list of (confidence, nm)
        Increasing in the confidence, non-increasing in nm (per-axis RMSE).
    """

    window_fine_px: int
    photons_table: list
    uncertainty_table: list

    def photons(self, integrated: np.ndarray) -> np.ndarray:
        """Photons of detections from their integrated prediction (sum / target_scale)."""
        return _interp(integrated, self.photons_table)

    def uncertainty_nm(self, confidence: np.ndarray) -> np.ndarray:
        """Per-axis uncertainty (nm) of detections from their confidence."""
        return _interp(confidence, self.uncertainty_table)

    @classmethod
    def from_meta(cls, data: Any, source: str = "model") -> "DeepStormEstimates":
        """Read the ``estimates`` section of a model.yaml; UserError when malformed."""
        if not isinstance(data, dict):
            raise UserError(f"{source}: estimates must be a mapping, got {data!r}")
        try:
            window = data["photons"]["window_fine_px"]
            photons = data["photons"]["table"]
            uncertainty = data["uncertainty_nm"]["table"]
        except (KeyError, TypeError):
            raise UserError(f"{source}: estimates needs photons.window_fine_px, photons.table "
                            f"and uncertainty_nm.table") from None
        if not (isinstance(window, int) and window > 0 and window % 2 == 1):
            raise UserError(f"{source}: estimates.photons.window_fine_px must be a positive "
                            f"odd integer, got {window!r}")
        return cls(window, _check_table(photons, f"{source}: estimates.photons.table"),
                   _check_table(uncertainty, f"{source}: estimates.uncertainty_nm.table"))


def _interp(x: np.ndarray, table: list) -> np.ndarray:
    xs, ys = np.asarray(table, dtype=np.float64).T
    return np.interp(np.asarray(x, dtype=np.float64), xs, ys)


def _check_table(table: Any, where: str) -> list:
    try:
        arr = np.asarray(table, dtype=np.float64)
    except (TypeError, ValueError):
        arr = np.empty((0, 0))
    if arr.ndim != 2 or arr.shape[1] != 2 or len(arr) < 1 or not np.all(np.isfinite(arr)):
        raise UserError(f"{where} must be a non-empty list of [x, value] number pairs")
    if np.any(np.diff(arr[:, 0]) <= 0) or np.any(arr[:, 1] <= 0):
        raise UserError(f"{where}: x must increase and every value must be > 0")
    return arr.tolist()


# --------------------------------------------------------------------------- fitting
def monotone_table(x: np.ndarray, y: np.ndarray, increasing: bool, reduce: str,
                   min_per_bin: int = MIN_PER_BIN, max_bins: int = MAX_BINS) -> list:
    """Binned, monotone look-up table of ``y`` against ``x``.

    ``x`` is cut into quantile bins of at least ``min_per_bin`` points (at most
    ``max_bins`` bins); each bin gives (median x, statistic of y) with the statistic
    ``"median"`` or ``"mean"``; the statistics are made monotone in x (isotonic regression
    weighted by the bin counts). Returns ``[[x, value], ...]`` with x strictly increasing.
    """
    from sklearn.isotonic import IsotonicRegression

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n_bins = int(np.clip(len(x) // min_per_bin, 1, max_bins))
    labels = pd.qcut(x, n_bins, labels=False, duplicates="drop") if n_bins > 1 \
        else np.zeros(len(x), np.int64)
    frame = pd.DataFrame({"bin": labels, "x": x, "y": y}).groupby("bin")
    centres = frame["x"].median().to_numpy()
    stats = (frame["y"].median() if reduce == "median" else frame["y"].mean()).to_numpy()
    counts = frame.size().to_numpy().astype(np.float64)
    # Bins of equal median x (ties) are pooled so the table's x strictly increases.
    keys, inverse = np.unique(centres, return_inverse=True)
    pooled = np.bincount(inverse, weights=stats * counts) / np.bincount(inverse, weights=counts)
    weights = np.bincount(inverse, weights=counts)
    fitted = IsotonicRegression(increasing=increasing).fit(keys, pooled, sample_weight=weights)
    table: list = []
    for a, b in zip(keys, fitted.predict(keys)):
        a = round(float(a), 6)
        if not table or a > table[-1][0]:
            table.append([a, float(f"{b:.6g}")])
    return table


def detections(engine, photons: np.ndarray, pixel_size_nm: float, window_fine_px: int,
               chunk_frames: int = 16) -> pd.DataFrame:
    """Localizations of ``engine`` at its threshold with their ``integrated`` prediction.

    Frames are predicted ``chunk_frames`` at a time so memory stays bounded.
    """
    from stormfold.localize.peaks import find_peaks, peaks_to_table, window_sum

    tables = []
    fine = pixel_size_nm / engine.upsampling
    for start in range(0, len(photons), chunk_frames):
        maps = engine.predict(photons[start:start + chunk_frames])
        peaks = find_peaks(maps, engine.threshold * engine.target_scale)
        integrated = (window_sum(maps, peaks, window_fine_px) / engine.target_scale).cpu().numpy()
        tables.append(peaks_to_table(peaks, start, fine, confidence_scale=engine.target_scale,
                                     integrated=integrated.astype(np.float64)))
    return pd.concat(tables, ignore_index=True)


def calibrate_estimates(engine, photons: np.ndarray, truth: pd.DataFrame, pixel_size_nm: float,
                        tolerance_nm: float = 100.0,
                        window_fine_px: int = DEFAULT_WINDOW_FINE_PX,
                        min_per_bin: int = MIN_PER_BIN) -> dict:
    """Fit the photons and uncertainty tables of ``engine`` on simulated frames.

    Parameters
    ----------
    engine : DeepStormEngine
        The model at its extraction threshold.
    photons : (n, rows, cols) float32
        Frames in photons, simulated like the training data.
    truth : DataFrame
        Their ground truth (with a ``photons`` column, else no estimates).
    pixel_size_nm : float
        Camera pixel size.
    tolerance_nm : float
        Matching radius (one-to-one, per frame) between localizations and truth.
    window_fine_px : int
        Integration window of the photons estimate (odd).

    Returns
    -------
    dict
        The ``estimates`` section of model.yaml (tables and the figures of the fit), or,
        with fewer than :data:`MIN_MATCHES` matches or no true photons, the counts and a
        ``note`` without tables.
    """
    from stormfold.evaluate.matching import match

    locs = detections(engine, photons, pixel_size_nm, window_fine_px)
    m = match(truth, locs, tolerance_nm)
    record: dict[str, Any] = {"threshold": float(engine.threshold), "tolerance_nm": tolerance_nm,
                              "n_localizations": int(len(locs)), "n_truth": int(len(truth)),
                              "n_matched": int(len(m))}
    if "photons" not in truth.columns:
        record["note"] = ("the calibration truth has no photons column: no estimates (the "
                          "photons and uncertainty_nm columns are left out)")
        return record
    if len(m) < MIN_MATCHES:
        record["note"] = (f"only {len(m)} localizations matched the truth: no estimates "
                          f"(the photons and uncertainty_nm columns are left out)")
        return record
    matched = locs.iloc[m.locs_index]
    integrated = matched["integrated"].to_numpy()
    true_photons = truth["photons"].to_numpy(np.float64)[m.truth_index]
    sq_err = 0.5 * (m.dx_nm ** 2 + m.dy_nm ** 2)
    photons_table = monotone_table(integrated, true_photons, True, "median", min_per_bin)
    mse_table = monotone_table(matched["confidence"].to_numpy(), sq_err, False, "mean",
                               min_per_bin)
    estimate = _interp(integrated, photons_table)
    rel = np.abs(estimate - true_photons) / np.maximum(true_photons, 1e-9)
    corr = np.corrcoef(integrated, true_photons)[0, 1] if np.std(integrated) > 0 \
        and np.std(true_photons) > 0 else float("nan")
    record["photons"] = {
        "window_fine_px": int(window_fine_px),
        "table": photons_table,
        "correlation": _round(corr),
        "median_abs_rel_error": _round(np.median(rel)),
        "true_photons_median": _round(np.median(true_photons)),
    }
    record["uncertainty_nm"] = {
        "definition": "per-axis RMSE sqrt(mean((dx^2 + dy^2) / 2)) of matched localizations",
        "table": [[c, round(math.sqrt(v), 3)] for c, v in mse_table],
        "rmse_nm": _round(math.sqrt(float(np.mean(sq_err)))),
    }
    return record


def _round(value: float, digits: int = 4) -> float | None:
    value = float(value)
    return None if not math.isfinite(value) else round(value, digits)
