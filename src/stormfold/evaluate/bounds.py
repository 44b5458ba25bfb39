"""How well *any* unbiased localizer could do on a movie: the joint Cramér–Rao bound.

The usual CRLB of a localization is that of an emitter alone in its region. In a dense
frame the neighbours' photons overlap and their positions are unknown too, so the bound
that holds is the *joint* one: the Fisher information of all the frame's emitters at once,

    I = Jᵀ diag(1 / (λ + γ)) J,   λ_k = b + Σ_m N_m · PSF_m(k),

with J the derivatives of the expected counts λ of every pixel k with respect to every
emitter's (x, y, N) and the background b (one unknown per window, see below), γ the read
noise variance (counts², as in :mod:`stormfold.localize.classic.fit`). The lateral bound of
emitter m is √([I⁻¹]_xx + [I⁻¹]_yy). It assumes the number of emitters known: a real
localizer must also find them, so it is an optimistic floor. A *biased* estimator (one
that has learned the scene's statistics, such as a network trained on the same simulator)
can beat it; an unbiased one cannot.

The model is the pixel-integrated Gaussian of the classic fit (known σ per emitter).
Large frames are cut into square windows (``window_px``) extended by a margin of 4 σ + 1
px: the emitters whose centre lies in the extended window are all unknowns, and the bound
is kept for those in its core. Emitters further apart than the margin barely share
photons, so the cut changes little while keeping the matrices small.

:func:`matched_rmse_floor` turns the bounds into what the usual scores of
:func:`stormfold.evaluate.evaluate` would read for an estimator that reaches them: the
RMSE of pairs matched within a tolerance and the fraction of emitters within it.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from stormfold.errors import UserError

#: Columns a ground-truth table needs for the bound.
BOUND_COLUMNS = ("frame", "x_nm", "y_nm", "photons", "sigma_nm")


def joint_crlb(truth: pd.DataFrame, shape_px: tuple[int, int], pixel_size_nm: float,
               background_photons: float, counts_per_photon: float = 1.0,
               gamma: float = 0.0, window_px: int = 32) -> pd.DataFrame:
    """Joint and single-emitter Cramér–Rao bounds of every true emitter.

    Parameters
    ----------
    truth : DataFrame
        Ground truth with columns ``frame``, ``x_nm``, ``y_nm`` (corner convention),
        ``photons`` (photons per emitter and frame) and ``sigma_nm`` (PSF σ).
    shape_px : (int, int)
        Frame (rows, cols) in camera pixels.
    pixel_size_nm : float
    background_photons : float
        Background, photons per pixel (uniform; its level is one more unknown per window).
    counts_per_photon : float
        Poisson counts per photon (``NoiseModel.counts_per_photon``: QE, ½ for an EMCCD).
    gamma : float
        Read-noise variance in counts² (``NoiseModel.gamma``).
    window_px : int
        Core size of the windows a frame is cut into (px). 32, 64 and 128 gave the same
        floor within 1e-4 on 128×128 frames at 6/µm²; 32 is 4× faster than 64.

    Returns
    -------
    DataFrame
        Indexed like ``truth``: ``crlb_nm`` (joint lateral bound √(CRLB_x + CRLB_y), nm;
        inf where the information matrix is singular, e.g. two emitters on one spot, or
        the emitter has no photons) and ``crlb_alone_nm`` (the same
        emitter alone with the background, nm).
    """
    missing = [c for c in BOUND_COLUMNS if c not in truth.columns]
    if missing:
        from stormfold.io.thunderstorm import CANONICAL

        # Named as the truth file's header says it (sigma [nm]), then as the table column.
        header = {column: name for name, column in CANONICAL}
        names = [c if header.get(c, c) == c else f"{header[c]} ({c})" for c in missing]
        raise UserError(f"the bound needs ground-truth column(s) {', '.join(names)}")
    rows, cols = (int(v) for v in shape_px)
    if rows <= 0 or cols <= 0 or not pixel_size_nm > 0 or window_px < 1:
        raise UserError("the bound needs a positive frame shape, pixel size and window")
    if not (background_photons >= 0 and counts_per_photon > 0 and gamma >= 0):
        raise UserError("the bound needs background ≥ 0, counts per photon > 0 and γ ≥ 0")
    n_all = len(truth)
    joint = np.full(n_all, np.nan)
    alone = np.full(n_all, np.nan)
    if n_all == 0:
        return pd.DataFrame({"crlb_nm": joint, "crlb_alone_nm": alone}, index=truth.index)
    frame = truth["frame"].to_numpy(np.int64)
    x = truth["x_nm"].to_numpy(np.float64) / pixel_size_nm
    y = truth["y_nm"].to_numpy(np.float64) / pixel_size_nm
    counts = truth["photons"].to_numpy(np.float64) * counts_per_photon
    sigma = truth["sigma_nm"].to_numpy(np.float64) / pixel_size_nm
    if not (np.isfinite(np.c_[x, y, counts, sigma]).all() and (counts >= 0).all()
            and (sigma > 0).all()):
        raise UserError("the bound needs finite positions, photons ≥ 0 and sigma [nm] > 0")
    outside = np.flatnonzero((x < 0) | (x >= cols) | (y < 0) | (y >= rows))
    if outside.size:
        # A simulation's truth lies inside its frame: else truth and settings do not match.
        i = int(outside[0])
        raise UserError(f"the bound: {outside.size} true emitter(s) outside the simulated "
                        f"{cols} × {rows} px frame (first at x {x[i] * pixel_size_nm:g} nm, "
                        f"y {y[i] * pixel_size_nm:g} nm): the truth does not come from this "
                        f"simulation")
    # An emitter without photons adds nothing to the data; its position has no bound.
    joint[counts == 0] = np.inf
    alone[counts == 0] = np.inf
    bg = background_photons * counts_per_photon
    margin = int(math.ceil(4.0 * float(sigma.max()))) + 1
    lit = np.flatnonzero(counts > 0)
    order = lit[np.argsort(frame[lit], kind="stable")]
    starts = np.r_[0, np.flatnonzero(np.diff(frame[order])) + 1, order.size]
    for a, b in zip(starts[:-1], starts[1:]):
        members = order[a:b]
        # Only the windows whose core holds an emitter (a large frame is mostly empty ones).
        cells = np.unique(np.c_[np.floor(y[members] / window_px), np.floor(x[members] / window_px)],
                          axis=0).astype(np.int64)
        for cell_r, cell_c in cells:
            if 0 <= cell_r * window_px < rows and 0 <= cell_c * window_px < cols:
                _window(members, x, y, counts, sigma, bg, gamma, (rows, cols),
                        (int(cell_r) * window_px, int(cell_c) * window_px, window_px, margin),
                        joint, alone)
    return pd.DataFrame({"crlb_nm": joint * pixel_size_nm,
                         "crlb_alone_nm": alone * pixel_size_nm}, index=truth.index)


def _window(members, x, y, counts, sigma, bg, gamma, shape, window, joint, alone) -> None:
    """Bounds of the emitters of ``members`` in one window's core (writes ``joint``/``alone``)."""
    # Imported here: scoring without the bound does not need torch.
    import torch

    from stormfold.localize.classic.fit import fisher_information, gaussian_model

    rows, cols = shape
    r0, c0, size, margin = window
    in_core = (x[members] >= c0) & (x[members] < c0 + size) & \
        (y[members] >= r0) & (y[members] < r0 + size)
    if not in_core.any():
        return
    lo_r, hi_r = max(0, r0 - margin), min(rows, r0 + size + margin)
    lo_c, hi_c = max(0, c0 - margin), min(cols, c0 + size + margin)
    near = (x[members] >= lo_c) & (x[members] < hi_c) & (y[members] >= lo_r) & (y[members] < hi_r)
    idx = members[near]
    core = in_core[near]
    n = idx.size
    side = max(hi_r - lo_r, hi_c - lo_c)
    theta = torch.tensor(np.c_[x[idx] - lo_c, y[idx] - lo_r, counts[idx], np.zeros(n), sigma[idx]])
    mu, jac = gaussian_model(theta, side)
    mu = mu[:, :hi_r - lo_r, :hi_c - lo_c]
    jac = jac[:, :3, :hi_r - lo_r, :hi_c - lo_c].flatten(2)  # (n, 3, pixels): x, y, N
    # Rows of J: every emitter's (x, y, N), then the background.
    full = torch.cat([jac.reshape(3 * n, -1), torch.ones(1, jac.shape[-1], dtype=jac.dtype)])
    var = torch.diagonal(_inverse(fisher_information(full[None], mu.sum(0).flatten()[None] + bg,
                                                    gamma)), dim1=1, dim2=2)[0, :-1].reshape(n, 3)
    joint[idx[core]] = _lateral(var)[core]
    # Alone: the emitter's own (x, y, N) and the background, its neighbours absent.
    own = torch.cat([jac, torch.ones(n, 1, jac.shape[-1], dtype=jac.dtype)], 1)
    var1 = torch.diagonal(_inverse(fisher_information(own, mu.flatten(1) + bg, gamma)),
                          dim1=1, dim2=2)
    alone[idx[core]] = _lateral(var1)[core]


#: A lateral variance above this (px², i.e. 100 px RMS) means "not identifiable".
NOT_IDENTIFIABLE_PX2 = 1e4


def _inverse(info):
    """Inverse of information matrices with a 1e-10 relative ridge: a singular matrix
    (coincident emitters, an emitter without photons) then gives huge variances to the
    parameters it cannot determine and leaves the others as they are."""
    import torch

    ridge = torch.diag_embed(torch.diagonal(info, dim1=1, dim2=2) * 1e-10 + 1e-300)
    cov, _ = torch.linalg.inv_ex(info + ridge)
    return cov


def _lateral(var):
    """√(var_x + var_y) per emitter (px), inf where it is not identifiable."""
    lateral = (var[:, 0] + var[:, 1]).numpy()
    ok = np.isfinite(lateral) & (lateral > 0) & (lateral < NOT_IDENTIFIABLE_PX2)
    return np.where(ok, np.sqrt(np.where(ok, lateral, 1.0)), np.inf)


def matched_rmse_floor(crlb_nm, tolerance_nm: float,
                       recall: float | None = None) -> tuple[float, float]:
    """RMSE of matched pairs and fraction of emitters matched, for an estimator whose
    errors reach the bounds ``crlb_nm``.

    Each emitter's error is taken as an unbiased isotropic 2-D Gaussian with lateral
    variance ``crlb_nm²`` (per axis half of it); a pair counts when the error is within
    ``tolerance_nm``. With a = T² / crlb², the squared error e² is exponential with mean
    crlb², so P(e < T) = 1 − exp(−a) and E[e²; e < T] = crlb² (1 − (1 + a) exp(−a)).

    An engine that reports fewer emitters is scored on fewer pairs, and the ones it
    misses tend to be the hardest. ``recall`` gives the floor for an estimator that matches
    only that fraction of the emitters, the ones with the smallest bounds: the lowest RMSE
    any unbiased estimator can score at that recall. (An engine whose Jaccard index is J
    has recall ≥ J.)

    Parameters
    ----------
    crlb_nm : array-like
        Lateral bounds (nm), e.g. :func:`joint_crlb`'s ``crlb_nm``; inf counts as never
        within the tolerance.
    tolerance_nm : float
    recall : float, optional
        Fraction of the emitters matched, in (0, 1]; default: all that can be.

    Returns
    -------
    (float, float)
        The RMSE of the pairs within the tolerance (nm; NaN when none can be), and the
        expected fraction of emitters within it (at most ``recall``).
    """
    v = np.sort(np.asarray(crlb_nm, dtype=np.float64) ** 2)
    if v.size == 0 or not tolerance_nm > 0:
        raise UserError("the RMSE floor needs bounds and a tolerance > 0")
    if recall is not None and not 0 < recall <= 1:
        raise UserError(f"recall must be in (0, 1], got {recall}")
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(v > 0, tolerance_nm ** 2 / v, np.inf)
        p = np.where(np.isfinite(v), -np.expm1(-a), 0.0)
        e2 = np.where(np.isfinite(v) & (v > 0), v * (1.0 - (1.0 + a) * np.exp(-a)), 0.0)
    if recall is not None:
        # The easiest emitters first, the last one counted in part.
        take = np.clip(recall * v.size - (np.cumsum(p) - p), 0.0, p) / np.where(p > 0, p, 1.0)
        p, e2 = p * take, e2 * take
    inside = float(p.sum())
    rmse = math.sqrt(float(e2.sum()) / inside) if inside > 0 else math.nan
    return rmse, inside / v.size


def floor_table(bounds: pd.DataFrame, tolerances_nm, recalls=None) -> pd.DataFrame:
    """One row per tolerance: what an estimator reaching ``bounds`` would score.

    Parameters
    ----------
    bounds : DataFrame
        :func:`joint_crlb`'s output (rows of the emitters scored).
    tolerances_nm : sequence of float
    recalls : sequence of float, optional
        An engine's recall at each tolerance: adds the floor at that recall.

    Returns
    -------
    DataFrame
        ``tolerance_nm``, ``floor_rmse_nm``, ``floor_recall`` (expected fraction of emitters
        within the tolerance), ``joint_median_nm``, ``alone_median_nm`` and, with
        ``recalls``, ``recall`` and ``floor_rmse_at_recall_nm``.
    """
    crlb = bounds["crlb_nm"].to_numpy()
    rows = []
    for k, tol in enumerate(tolerances_nm):
        rmse, within = matched_rmse_floor(crlb, float(tol))
        row = {"tolerance_nm": float(tol), "floor_rmse_nm": rmse, "floor_recall": within,
               "joint_median_nm": float(bounds["crlb_nm"].median()),
               "alone_median_nm": float(bounds["crlb_alone_nm"].median())}
        if recalls is not None:
            r = float(recalls[k])
            row["recall"] = r
            row["floor_rmse_at_recall_nm"] = matched_rmse_floor(crlb, float(tol), recall=r)[0] \
                if 0 < r <= 1 else math.nan
        rows.append(row)
    return pd.DataFrame(rows)
