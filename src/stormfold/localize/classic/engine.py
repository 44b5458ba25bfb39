"""The classical engine: band-pass detection + single-emitter Poisson MLE with CRLB.

``stormfold localize MOVIE --engine classic [--threshold T] [--set key=value ...]``.

Noise model. The runner hands the engine photons, (ADU − baseline)·e⁻/ADU / gain / QE.
The fit needs counts with Poisson statistics, so the engine converts photons to

    counts = photons · QE / F

where F is the excess-noise factor (2 for an EMCCD, whose electron multiplication doubles
the variance of the photo-electrons; 1 otherwise). For an EMCCD this is the
ZeroCostDL4Mic documentation's rule (divide photons by 2): ``counts`` then have variance
≈ mean, and the Poisson likelihood, its estimates and its CRLB are those of the data
(to second moments: the Gamma-amplified counts are not exactly Poisson). Read noise and
ADU rounding add a variance γ = (readout_e / (gain·F))² + (e⁻/ADU / (gain·F))²/12 counts²,
handled with the Poisson approximation d + γ ~ Poisson(μ + γ). Photons and background
are converted back (÷ QE/F) for the output. QE, F and γ come from the camera the runner
used (:meth:`ClassicEngine.set_camera`) and can be overridden with ``excess_factor`` and
``read_noise_photons``.

Which fits are kept (the others are dropped silently and counted in ``describe()``):
finite estimates and CRLB; the fitted position within ``max_shift_px`` of the candidate
pixel's centre (a fit that walks away has converged onto a neighbour or onto nothing) and
inside the frame; no parameter on a bound of the fit (:func:`on_fit_bound`): x or y clipped
to either edge of the region (at the frame's first or last pixel edge alike: an emitter
half outside the frame), N clipped to its floor of 1 count (an uncertainty of
micrometres), σ within 1 % of its range; then, of two localizations in the same
frame closer than ``min_separation_px``, only the one with the higher detection score.

Crowding. One emitter is fitted per spot: above about one emitter per µm² per frame
neighbours merge (JI@100 nm below 0.6, photons too high) and the engine warns once per movie
when its first batch holds more than :data:`~stormfold.localize.domain.CLASSIC_DENSITY_ABOVE`
localizations per µm² per frame (:class:`~stormfold.localize.domain.DensityCheck`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

import numpy as np
import torch
from scipy.spatial import cKDTree

from stormfold.config import MAX_THREADS, from_dict
from stormfold.errors import UserError
from stormfold.localize.classic.detect import detect, extract_rois
from stormfold.localize.classic.fit import B, N, S, X, Y, FitBounds, fit_spots, initial_guess
from stormfold.localize.domain import CLASSIC_DENSITY_ABOVE, DensityCheck
from stormfold.localize.engine import Engine, EngineOutput
from stormfold.physics.camera import Camera
from stormfold.table import make_table

#: End of the density warning (:data:`stormfold.localize.domain.CLASSIC_DENSITY_ABOVE`).
CROWDED = ("too crowded for the classic single-emitter fit, which merges neighbours and "
           "counts fewer than there are (simulations: JI@100 nm below 0.6, photons too high); "
           "use --model builtin:gridnet-generalist")

#: Extra output column: 2 × Poisson log-likelihood ratio against a perfect fit (≈ χ² with
#: roi_px² − 5 degrees of freedom for a good single-emitter fit).
LLR_COLUMN = "llr"


@dataclass
class ClassicOptions:
    """Options of the classical engine (``--set key=value``).

    Attributes
    ----------
    threshold : float
        Detection threshold in multiples of the robust (MAD) noise of the band-passed frame
        (``--threshold``), scaled per pixel to the local background with ``local_noise``.
    local_noise : bool
        Scale the frame's noise (measured in its darkest tenth) per pixel by
        √((local level + γ) / (dark level + γ))
        (:func:`stormfold.localize.classic.detect.local_noise_scale`): on a background step or
        a cell a spot must stand out of its own shot noise. Measured (`experiments/classic_local_noise.py`): a step 10 | 200 photons/px
        JI@100 0.603 → 0.775, a background blob 0.812 → 0.844, `thunderstorm`, `challenge2016`
        and `zerocost` at 0.1–0.5/µm² +0.004 to +0.011, 2/µm² −0.0007.
    roi_px : int
        Side of the fitted square region, odd, ≥ 5.
    sigma_init_px : float
        PSF σ (pixels) of the detection filter and start of the fit.
    fit_sigma : bool
        Fit σ per spot (else σ = ``sigma_init_px`` is fixed).
    iterations : int
        Levenberg–Marquardt iterations.
    dog_ratio : float
        Ratio of the two Gaussians of the band-pass filter.
    sigma_min_px, sigma_max_px : float
        Bounds of σ (pixels); fits ending at a bound are dropped.
    max_shift_px : float
        Largest distance (pixels) of the fit from the candidate pixel's centre.
    min_separation_px : float
        Localizations in one frame closer than this are duplicates (one is kept).
    excess_factor : float or None
        Excess-noise factor F (None: 2 for a camera with EM gain > 1, else 1).
    read_noise_photons : float or None
        Read-noise standard deviation in photons (None: from the camera).
    upsampling : int
        Factor L of the rendered super-resolution histogram.
    threads : int
        Torch threads while processing a batch (restored afterwards).
    """

    threshold: float = 5.0
    roi_px: int = 7
    sigma_init_px: float = 1.0
    fit_sigma: bool = True
    iterations: int = 8
    dog_ratio: float = 2.5
    sigma_min_px: float = 0.4
    sigma_max_px: float = 3.0
    max_shift_px: float = 1.5
    min_separation_px: float = 0.5
    excess_factor: Optional[float] = None
    read_noise_photons: Optional[float] = None
    upsampling: int = 8
    threads: int = 1
    local_noise: bool = True

    def validate(self) -> None:
        if not self.threshold > 0:
            raise UserError(f"classic: threshold must be > 0, got {self.threshold}")
        if self.roi_px < 5 or self.roi_px % 2 == 0:
            raise UserError(f"classic: roi_px must be odd and ≥ 5, got {self.roi_px}")
        if not 0 < self.sigma_min_px < self.sigma_init_px < self.sigma_max_px:
            raise UserError("classic: need 0 < sigma_min_px < sigma_init_px < sigma_max_px, got "
                            f"{self.sigma_min_px}, {self.sigma_init_px}, {self.sigma_max_px}")
        if self.iterations < 1:
            raise UserError(f"classic: iterations must be ≥ 1, got {self.iterations}")
        if not self.dog_ratio > 1:
            raise UserError(f"classic: dog_ratio must be > 1, got {self.dog_ratio}")
        if not self.max_shift_px > 0 or self.min_separation_px < 0:
            raise UserError("classic: max_shift_px must be > 0 and min_separation_px ≥ 0")
        if self.excess_factor is not None and not self.excess_factor >= 1:
            raise UserError(f"classic: excess_factor must be ≥ 1, got {self.excess_factor}")
        if self.read_noise_photons is not None and self.read_noise_photons < 0:
            raise UserError(f"classic: read_noise_photons must be ≥ 0, got {self.read_noise_photons}")
        if self.upsampling < 1:
            raise UserError(f"classic: upsampling must be ≥ 1, got {self.upsampling}")
        if not 1 <= self.threads <= MAX_THREADS:
            raise UserError(f"classic: threads must be 1..{MAX_THREADS}, got {self.threads}")


@dataclass
class NoiseModel:
    """How photons map to Poisson counts: counts = photons · ``counts_per_photon``, plus
    Gaussian noise of variance ``gamma`` (counts²)."""

    counts_per_photon: float = 1.0
    gamma: float = 0.0
    excess_factor: float = 1.0

    @classmethod
    def from_camera(cls, camera: Camera, excess_factor: float | None = None,
                    read_noise_photons: float | None = None) -> "NoiseModel":
        """The noise model of ``camera`` (see the module docstring), with overrides."""
        f = excess_factor if excess_factor is not None else (2.0 if camera.em_gain > 1 else 1.0)
        s = camera.qe / f
        if read_noise_photons is not None:
            read = read_noise_photons * s
        else:
            read = camera.readout_e / (camera.em_gain * f)
        rounding = camera.e_per_adu / (camera.em_gain * f)
        return cls(counts_per_photon=s, gamma=read ** 2 + rounding ** 2 / 12.0, excess_factor=f)


#: A fitted parameter closer than this to a bound (relative, of the bound; positions: px)
#: sits on the bound: it was clipped there, not estimated.
BOUND_TOLERANCE = 0.01
POSITION_TOLERANCE_PX = 1e-3


def on_fit_bound(theta: torch.Tensor, size: int, bounds: FitBounds,
                 fit_sigma: bool = True) -> torch.Tensor:
    """Fits that sit on a bound of the fit (clipped there), to be dropped.

    Parameters
    ----------
    theta : (n, 5) tensor
        Estimates (x px, y px, N counts, b counts/px, σ px) in ROI coordinates.
    size : int
        ROI side (px); x and y are bounded to [−margin, size + margin].
    bounds : FitBounds
        The fit's bounds.
    fit_sigma : bool
        σ was fitted (a fixed σ is not on a bound of the fit).

    Returns
    -------
    (n,) bool tensor
        True where x or y is within :data:`POSITION_TOLERANCE_PX` of either position bound
        (both edges alike: a ROI at the frame edge clips an emitter half outside the frame
        to the edge), N ≤ ``min_counts`` × (1 + :data:`BOUND_TOLERANCE`), or, with
        ``fit_sigma``, σ within 1 % of either σ bound.
    """
    lo, hi = -bounds.margin_px, size + bounds.margin_px
    xy = theta[:, [X, Y]]
    out = ((xy <= lo + POSITION_TOLERANCE_PX) | (xy >= hi - POSITION_TOLERANCE_PX)).any(1)
    out |= theta[:, N] <= bounds.min_counts * (1 + BOUND_TOLERANCE)
    if fit_sigma:
        out |= (theta[:, S] <= bounds.sigma_min_px * (1 + BOUND_TOLERANCE)) \
            | (theta[:, S] >= bounds.sigma_max_px * (1 - BOUND_TOLERANCE))
    return out


class ClassicEngine(Engine):
    """Detection + MLE fit of every candidate, in torch, vectorised over a batch of frames.

    Parameters
    ----------
    options : ClassicOptions
    device : torch.device or str
    """

    name = "classic"

    def __init__(self, options: ClassicOptions | None = None, device: Any = "cpu"):
        self.options = options or ClassicOptions()
        self.device = torch.device(device)
        self.upsampling = self.options.upsampling
        self.noise = NoiseModel.from_camera(Camera(), self.options.excess_factor,
                                            self.options.read_noise_photons)
        self.camera: Camera | None = None
        self.stats = {"candidates": 0, "localizations": 0}
        # Crowded frames are fitted as merged spots, silently: one warning per movie.
        self.density_check = DensityCheck(CLASSIC_DENSITY_ABOVE, CROWDED)

    def set_camera(self, camera: Camera) -> None:
        """Use the noise model of the camera that converted the frames (see module doc)."""
        self.camera = camera
        self.noise = NoiseModel.from_camera(camera, self.options.excess_factor,
                                            self.options.read_noise_photons)

    # ------------------------------------------------------------------ core
    def localize(self, counts: torch.Tensor) -> dict[str, torch.Tensor]:
        """Detect and fit in (B, H, W) frames of Poisson counts.

        Returns a dict of tensors of the kept localizations: ``frame`` (batch index),
        ``x_px``, ``y_px`` (frame pixel coordinates, origin at the top-left corner),
        ``N``, ``b`` (counts), ``sigma_px``, ``var_x``, ``var_y`` (CRLB, px²),
        ``var_N`` (counts²), ``nllr``, ``score``.
        """
        o = self.options
        size = o.roi_px
        _, h, w = counts.shape
        if h < size or w < size:
            raise UserError(f"frames of {h}×{w} px are smaller than the fit region "
                            f"roi_px={size}")
        cand = detect(counts, o.sigma_init_px, o.threshold, o.dog_ratio,
                      gamma=self.noise.gamma if o.local_noise else None)
        self.stats["candidates"] += len(cand)
        rois, row0, col0 = extract_rois(counts, cand.frame, cand.row, cand.col, size)
        rc, cc = cand.row - row0, cand.col - col0
        theta0 = initial_guess(rois, rc, cc, o.sigma_init_px)
        bounds = FitBounds(sigma_min_px=o.sigma_min_px, sigma_max_px=o.sigma_max_px)
        res = fit_spots(rois, theta0, gamma=self.noise.gamma, iterations=o.iterations,
                        fit_sigma=o.fit_sigma, bounds=bounds)
        th = res.theta
        x = col0.to(th.dtype) + th[:, X]
        y = row0.to(th.dtype) + th[:, Y]
        shift = torch.hypot(x - (cand.col.to(th.dtype) + 0.5), y - (cand.row.to(th.dtype) + 0.5))
        keep = torch.isfinite(th).all(1) & torch.isfinite(res.crlb[:, :4]).all(1)
        keep &= shift <= o.max_shift_px
        keep &= (x > 0) & (x < w) & (y > 0) & (y < h)
        keep &= ~on_fit_bound(th, size, bounds, o.fit_sigma)
        out = {"frame": cand.frame, "x_px": x, "y_px": y, "N": th[:, N], "b": th[:, B],
               "sigma_px": th[:, S], "var_x": res.crlb[:, X], "var_y": res.crlb[:, Y],
               "var_N": res.crlb[:, N], "nllr": res.nllr, "score": cand.score}
        out = {k: v[keep] for k, v in out.items()}
        if o.min_separation_px > 0 and out["frame"].numel() > 1:
            unique = _drop_duplicates(out["frame"], out["x_px"], out["y_px"], out["score"],
                                      o.min_separation_px)
            out = {k: v[unique] for k, v in out.items()}
        return out

    def process(self, photons: np.ndarray, first_frame: int, pixel_size_nm: float) -> EngineOutput:
        """Localize a batch of frames in photons (see :class:`~stormfold.localize.Engine`)."""
        s = self.noise.counts_per_photon
        counts = torch.as_tensor(np.asarray(photons, dtype=np.float32), device=self.device) * s
        if counts.ndim == 2:
            counts = counts[None]
        previous = torch.get_num_threads()
        # The tensors of one batch are small: extra OpenMP threads cost more than they give,
        # and collapse when the CPU is shared. Parallelism comes from running batches apart.
        torch.set_num_threads(self.options.threads)
        try:
            with torch.inference_mode():
                res = self.localize(counts)
        finally:
            torch.set_num_threads(previous)
        res = {k: v.cpu().numpy() for k, v in res.items()}
        px = float(pixel_size_nm)
        self.stats["localizations"] += len(res["frame"])
        self.density_check(tuple(counts.shape), len(res["frame"]), px)
        locs = make_table(
            first_frame + res["frame"].astype(np.int64),
            res["x_px"].astype(np.float64) * px, res["y_px"].astype(np.float64) * px,
            photons=res["N"].astype(np.float64) / s, sigma_nm=res["sigma_px"].astype(np.float64) * px,
            bg=res["b"].astype(np.float64) / s,
            uncertainty_nm=px * np.sqrt(0.5 * (res["var_x"] + res["var_y"]).astype(np.float64)),
            **{LLR_COLUMN: 2.0 * res["nllr"].astype(np.float64)})
        return EngineOutput(locs=locs, superres=None)

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "upsampling": self.upsampling, "options": asdict(self.options),
                "noise_model": asdict(self.noise), "counts": dict(self.stats)}


def _drop_duplicates(frame: torch.Tensor, x: torch.Tensor, y: torch.Tensor, score: torch.Tensor,
                     radius_px: float) -> torch.Tensor:
    """Indices to keep: of any two points of one frame within ``radius_px``, the one with the
    lower detection score is dropped (frames are separated by a large coordinate offset)."""
    f = frame.cpu().numpy().astype(np.float64)
    pts = np.stack([x.cpu().numpy() + f * 1e6, y.cpu().numpy()], 1).astype(np.float64)
    pairs = cKDTree(pts).query_pairs(radius_px, output_type="ndarray")
    keep = np.ones(len(pts), bool)
    if len(pairs):
        sc = score.cpu().numpy()
        i, j = pairs[:, 0], pairs[:, 1]
        keep[np.where(sc[i] >= sc[j], j, i)] = False
    return torch.as_tensor(np.flatnonzero(keep), device=frame.device)


def build_engine(device: Any = None, threshold: float | None = None,
                 options: dict | None = None) -> ClassicEngine:
    """The engine of ``--engine classic`` (see the registry); ``options`` from ``--set``."""
    opts = dict(options or {})
    if threshold is not None:
        opts["threshold"] = threshold
    config = from_dict(ClassicOptions, opts, where="classic")
    return ClassicEngine(config, device=device if device is not None else "cpu")
