"""The unrolled method as a localization engine (``stormfold localize --model``).

Frames arrive in photons (the runner applied the camera model); the trained solver turns
each batch into x_K on the fine grid (under ``torch.inference_mode``); the super-resolved
image is the sum of x_K. Localizations (:func:`extract`), by the model's extraction method:

- ``components`` (SPEC §5): the fine pixels ≥ the threshold, 8-connected groups merged into
  intensity-weighted centroids (:mod:`stormfold.localize.components`); the threshold is on
  the pixel value;
- ``peaks`` (beyond the paper): every 3×3 local maximum of x_K whose 3×3 sum is ≥ the
  threshold, at the centroid of that window (:mod:`stormfold.localize.peaks`). After
  K = 100 iterations an emitter is a small blob of a few fine pixels and two emitters closer
  than the PSF often touch: a connected component then merges them into one localization,
  while their two maxima stay apart.

The intensity of a localization is the sum of x_K over its group or window, written as
:data:`INTENSITY_COLUMN` (``intensity [a.u.]``), **not** as photons: x_K is in photons per
fine pixel, but after K iterations a detection's group or window holds only part of the
emitter's photons, and a share that depends on the PSF (review 12: 0.54–0.65 × the true
photons at the model's own σ, 1.3 × at σ = 50 nm). No model is calibrated to photons, so
none writes ``photons``.

**Dim or noisy movies.** A calibrated threshold can be tiny (the shipped model keeps every
3×3 peak: 0.0003): on frames dimmer or noisier than the training ones every noise peak then
becomes a localization. ``model.yaml`` ``extraction.intensity_p05`` is the 5 % quantile of
the localizations' intensities on the training frames at the calibrated threshold; when, after
at least :data:`LOW_CHECK_MIN` localizations, :data:`LOW_SHARE` or more of a run's
localizations lie below it, one warning names ``--threshold`` (:func:`low_intensity_warning`).

Options (``--set key=value``):

``background``
    ``estimate`` (per frame from the data), ``learned``/``given`` (the model's value) or a
    number of photons per camera pixel. Default: the model's background mode.
``connectivity``
    8 (default) or 4.
``merge``
    true (default): one localization per connected group; false: one per pixel.
``method``
    ``components`` or ``peaks`` (default: the model's ``extraction.method``).
``chunk_frames``
    Frames solved at once inside a batch (default 16; memory ∝ chunk × fine frame size).
``sigma_nm``
    The PSF σ of the solver's operator: ``auto`` (default) measures the movie's spots on the
    decision frames (:func:`stormfold.localize.runner.decision_ranges`; the first batch
    where frames come one batch at a time; :func:`stormfold.localize.spots.psf_sigma_px`)
    and, when their median
    width differs from the model's σ by more than :data:`SIGMA_TOLERANCE` and three in four
    spots lie on that side, solves with it
    (within :data:`SIGMA_FACTOR_RANGE` of the model's; one warning says so); where the spots
    cannot tell (crowded frames, fewer than 16 frames) the model's σ stays.
    ``model`` keeps the model's σ; a number (nm, 5–5000 and ×0.25–4 the model's) sets it. The operator is the physics, the
    learned parameters (ρ, α, τ, threshold) stay: on fresh ``zerocost`` movies at 1/µm² the
    shipped model (σ 110 nm) scores JI@100 0.39 at σ 150 nm with its own σ and 0.92 with the
    movie's (README, "Unrolled").
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stormfold.errors import UserError
from stormfold.localize.components import components_to_table, find_components
from stormfold.localize.domain import UNROLLED_MARGINS, DomainCheck, TrainingDomain, emit
from stormfold.localize.engine import Engine, EngineOutput
from stormfold.localize.spots import (MIN_MEASURED_FRAMES, SpotCheck, SpotReference,
                                      psf_sigma_px)
from stormfold.physics.camera import Camera
from stormfold.table import INTENSITY_AU, empty_table
from stormfold.unrolled.model import load_unrolled_model
from stormfold.unrolled.solver import UnrolledAPG

OPTIONS = ("background", "connectivity", "merge", "chunk_frames", "method", "sigma_nm")
#: ``sigma_nm=auto`` solves with the movie's measured PSF σ (the median) when three in four
#: spots lie beyond the model's σ by more than this share: the `zerocost` movie of `make
#: demo` (σ 110 ± 5 nm) measures a median of 120–129 nm from blends, and solving with it
#: cost JI@100 0.727 → 0.692–0.663 ...
SIGMA_TOLERANCE = 0.10
#: ... and keeps it within this range of the model's σ.
SIGMA_FACTOR_RANGE = (0.5, 2.0)
#: A given σ (nm) must lie in this range, and within GIVEN_SIGMA_FACTOR of the model's
#: (review 22: 1e300 crashed, 1e-300 ran and gave 170 localizations per emitter).
GIVEN_SIGMA_NM = (5.0, 5000.0)
GIVEN_SIGMA_FACTOR = (0.25, 4.0)
#: decide() keeps at most this many pixels of the frames it is given (32 frames of 1024²).
PROBE_COLLECT_PIXELS = 32 * 1024 * 1024
METHODS = ("components", "peaks")
#: Table column of the summed reconstruction (ThunderSTORM ``intensity [a.u.]``).
INTENSITY_COLUMN = INTENSITY_AU
#: Share of localizations below the training frames' 5 % intensity quantile that warns: 5 %
#: there by definition, 7 % on the real ISBI movie, ≤ 14 % on in-range simulations, 40–66 %
#: on the dim or noisy ones of review 12 (Jaccard 0.05–0.40).
LOW_SHARE = 0.25
#: Localizations needed before the share is judged.
LOW_CHECK_MIN = 50
#: Measured spot width over the model's PSF σ, and photons over its training photons,
#: outside which the spot check warns (`experiments/spot_checks.py`: the shipped model, σ
#: 110 nm and 470 photons, scores JI@100 0.94 at σ 70–120 nm, 0.90 / 0.85 / 0.78 / 0.40 at
#: 125 / 130 / 135 / 150; 0.96 at 700 and 8,000 photons, 0.84 / 0.66 / 0.51 / 0.42 at 500 /
#: 400 / 350 / 300, where false emitters come in: 1.4 localizations per emitter at 400,
#: 2.2 at 300). The solver is linear in the photons: brighter emitters are no harm.
SPOT_SIGMA_RANGE = (0.6, 1.12)
SPOT_PHOTONS_RANGE = (1.0, float("inf"))
OFF_MODEL = ("a PSF wider than the solver's or dimmer emitters give too many "
             "localizations: give the movie's PSF sigma (--set sigma_nm=S, in nm), use "
             "gridnet or a model trained for this movie")
#: What an elongated PSF does to this engine (:mod:`stormfold.localize.spots`).
ELONGATED = "the solver models a round PSF: its positions lose precision"


def extract(x: np.ndarray | torch.Tensor, threshold: float, first_frame: int, fine_pixel_nm: float,
            method: str = "components", connectivity: int = 8, merge: bool = True):
    """Localization table from fine-grid reconstructions x_K (B, rows·L, cols·L), photons.

    Parameters
    ----------
    x : array or Tensor
        Reconstructions (non-negative), photons per fine pixel.
    threshold : float
        ``components``: smallest pixel value of a detection (photons per fine pixel);
        ``peaks``: smallest 3×3 sum around a local maximum (photons).
    first_frame : int
        Absolute frame number of x[0].
    fine_pixel_nm : float
        Fine pixel size (nm).
    method : {"components", "peaks"}
        See the module notes.
    connectivity, merge
        Of ``components``.

    Returns
    -------
    DataFrame
        ``frame``, ``x_nm``, ``y_nm``, :data:`INTENSITY_COLUMN` (group or window sum of x_K;
        not photons, see the module notes), ``confidence`` (largest pixel of the group or
        window).
    """
    if method not in METHODS:
        raise UserError(f"unknown extraction method {method!r}: use components or peaks")
    if method == "components":
        comp = find_components(np.asarray(x), threshold, connectivity, merge)
        table = components_to_table(comp, first_frame, fine_pixel_nm) if len(comp) else \
            empty_table(("photons", "confidence"))
        return table.rename(columns={"photons": INTENSITY_COLUMN})
    from stormfold.localize.peaks import find_peaks
    from stormfold.table import make_table

    peaks = find_peaks(torch.as_tensor(x), 0.0)
    peaks = peaks.select(peaks.mass >= threshold)
    if not len(peaks):
        return empty_table((INTENSITY_COLUMN, "confidence"))
    frame = peaks.index.cpu().numpy().astype(np.int64) + int(first_frame)
    x_nm = peaks.x_px.cpu().numpy() * fine_pixel_nm
    y_nm = peaks.y_px.cpu().numpy() * fine_pixel_nm
    order = np.lexsort((x_nm, y_nm, frame))
    return make_table(frame[order], x_nm[order], y_nm[order],
                      **{INTENSITY_COLUMN: peaks.mass.double().cpu().numpy()[order]},
                      confidence=peaks.value.double().cpu().numpy()[order])


def low_intensity_warning(n_low: int, n: int, floor: float, threshold: float) -> str | None:
    """The one-line warning when ``n_low`` of ``n`` localizations lie below ``floor``.

    Parameters
    ----------
    n_low, n : int
        Localizations below ``floor`` and in all, so far.
    floor : float
        ``extraction.intensity_p05`` of the model (x_K sum, a.u.).
    threshold : float
        The extraction threshold in use.

    Returns
    -------
    str or None
        None with fewer than :data:`LOW_CHECK_MIN` localizations or a share below
        :data:`LOW_SHARE`.
    """
    if n < LOW_CHECK_MIN or n_low < LOW_SHARE * n:
        return None
    return (f"unrolled: {n_low} of {n} localizations ({100 * n_low / n:.0f} %) are fainter "
            f"than all but 5 % of those on the model's training frames (intensity {floor:.3g}; "
            f"threshold {threshold:.3g}): the movie is likely dimmer or noisier than the "
            f"training data and noise peaks are being localized; raise the threshold "
            f"(e.g. --threshold {floor:.3g}; stormfold run: engine.threshold)")


class UnrolledEngine(Engine):
    """Localization with a trained :class:`~stormfold.unrolled.solver.UnrolledAPG`.

    Parameters
    ----------
    solver : UnrolledAPG
        Trained solver (its operator fixes L and the PSF in fine pixels).
    pixel_size_nm : float
        Camera pixel size the model was trained for (nm).
    threshold : float, optional
        Extraction threshold in photons: per fine pixel for ``components``, per 3×3 window for
        ``peaks`` (default: the learned τ; the registry loader passes the model's
        ``extraction.threshold``, which is τ unless it was calibrated).
    background : str or float, optional
        Override of the background (see the module notes).
    camera : Camera, optional
        Camera of the training simulation (used when the movie has none).
    connectivity, merge, chunk_frames, method
        See the module notes.
    meta : dict, optional
        The model's metadata (recorded in ``run.yaml``). Its ``extraction.intensity_p05``
        (a number > 0) enables the dim-movie warning (see the module notes); when it records
        the training simulation (``training.data.simulation``), the first batch is checked
        against it with a one-line warning when clearly outside
        (:mod:`stormfold.localize.domain`).
    """

    name = "unrolled"

    def __init__(self, solver: UnrolledAPG, pixel_size_nm: float, threshold: float | None = None,
                 background: str | float | None = None, camera: Camera | None = None,
                 connectivity: int = 8, merge: bool = True, chunk_frames: int = 16,
                 meta: dict | None = None, method: str = "components",
                 sigma_nm: str | float = "auto"):
        self.solver = solver.eval()
        for p in self.solver.parameters():
            p.requires_grad_(False)
        self.upsampling = int(solver.op.factor)
        self.pixel_size_nm = float(pixel_size_nm)
        self.threshold = float(solver.tau.detach()) if threshold is None else float(threshold)
        if not np.isfinite(self.threshold) or self.threshold < 0:
            raise UserError(f"threshold must be a number ≥ 0 (photons per fine pixel), "
                            f"got {threshold}")
        self.background = _parse_background(background)
        self.camera = camera
        if connectivity not in (4, 8):
            raise UserError(f"connectivity must be 4 or 8, got {connectivity}")
        self.connectivity = int(connectivity)
        self.merge = bool(merge)
        if method not in METHODS:
            raise UserError(f"unknown extraction method {method!r}: use components or peaks")
        self.method = method
        if int(chunk_frames) < 1:
            raise UserError(f"chunk_frames must be ≥ 1, got {chunk_frames}")
        self.chunk_frames = int(chunk_frames)
        self.sigma_option = _parse_sigma(sigma_nm)
        self._probe: list | None = None  # decide(): the frames collected
        self.model_sigma_fine_px = float(solver.op.sigma_fine_px)
        self.model_radius = int(solver.op.radius)
        self.meta = meta or {}
        domain = TrainingDomain.from_meta(self.meta)
        self.domain_check = DomainCheck(domain, UNROLLED_MARGINS)
        self.spot_reference = SpotReference(
            sigma_nm=self.model_sigma_fine_px / self.upsampling * self.pixel_size_nm,
            sigma_range=SPOT_SIGMA_RANGE, photons=None if domain is None else domain.photons,
            photons_range=SPOT_PHOTONS_RANGE, consequence=OFF_MODEL)
        self.spot_check = SpotCheck(ELONGATED, self.spot_reference)
        self.device = next(iter(solver.parameters())).device
        floor = (self.meta.get("extraction") or {}).get("intensity_p05")
        valid = isinstance(floor, (int, float)) and not isinstance(floor, bool) \
            and np.isfinite(floor) and floor > 0
        self.intensity_p05 = float(floor) if valid else None
        self.start_movie()

    def start_movie(self, warn=None) -> None:
        """A new movie: the dim-movie count and the domain check start again. ``warn``: where
        the warnings go (:func:`warnings.warn` when None; ``stormfold run`` passes its own,
        so they also reach run.log, run.yaml and the report)."""
        super().start_movie(warn)
        self._low = [0, 0]  # localizations below intensity_p05, all
        self.low_message: str | None = None
        self.warn = warn
        self._set_sigma(self.model_sigma_fine_px)
        self.sigma_source = "model"
        self.sigma_message: str | None = None
        self.sigma_decided = False
        self._fine_nm: float | None = None  # the movie's fine pixel (nm), once seen

    def movie_warnings(self) -> list[str]:
        return ([self.sigma_message] if self.sigma_message else []) + \
            super().movie_warnings() + ([self.low_message] if self.low_message else [])

    @property
    def sigma_nm(self) -> float:
        """The PSF σ the solver uses, in nm (at the movie's pixel size once it was seen, else
        at the model's)."""
        fine_nm = self._fine_nm or self.pixel_size_nm / self.upsampling
        return float(self.solver.op.sigma_fine_px) * fine_nm

    def _set_sigma(self, sigma_fine_px: float) -> None:
        op = self.solver.op
        with torch.no_grad():
            op.sigma_fine_px.fill_(float(sigma_fine_px))
        op.radius = max(self.model_radius, int(np.ceil(4.0 * sigma_fine_px)))
        # The spot check judges the movie against the PSF the solver uses.
        self.spot_check.reference = replace(
            self.spot_reference, sigma_nm=float(sigma_fine_px) / self.upsampling
            * self.pixel_size_nm)

    def _choose_sigma(self, photons: np.ndarray, pixel_size_nm: float) -> None:
        """The operator's σ for this movie, on its first batch (see the module notes)."""
        self.sigma_decided = True
        fine_nm = self._fine_nm = pixel_size_nm / self.upsampling
        if self.sigma_option == "model":
            return
        if self.sigma_option != "auto":
            model_nm = self.model_sigma_fine_px * fine_nm
            lo, hi = (f * model_nm for f in GIVEN_SIGMA_FACTOR)
            if not lo <= self.sigma_option <= hi:
                raise UserError(f"sigma_nm {self.sigma_option:g} is outside {lo:.0f}–{hi:.0f} "
                                f"nm, ×{GIVEN_SIGMA_FACTOR[0]:g}–{GIVEN_SIGMA_FACTOR[1]:g} the "
                                f"model's {model_nm:.0f} nm at this pixel size: the model's "
                                f"parameters were not learned for such a PSF")
            self._set_sigma(float(self.sigma_option) / fine_nm)
            self.sigma_source = "given"
            return
        widths, n = psf_sigma_px(photons)
        if widths is None:
            self.sigma_source = (f"model (undecided: too few isolated spots in the "
                                 f"{len(photons)} frames it decides on, or fewer than "
                                 f"{MIN_MEASURED_FRAMES} frames)")
            return
        model_nm = self.model_sigma_fine_px * fine_nm
        low, movie_nm, high = (float(w) * pixel_size_nm for w in widths)
        # Blends of close emitters widen the upper part of the widths, so wider is believed
        # when three in four spots are wider than the model's σ by more than the tolerance
        # (narrower likewise): make demo's 2/µm² movie of σ 110 nm, measured on frames
        # spread over it, has a median of 129 nm but a lower quartile within 10 %.
        if not ((low > (1 + SIGMA_TOLERANCE) * model_nm)
                or (high < (1 - SIGMA_TOLERANCE) * model_nm)):
            return
        used = float(np.clip(movie_nm, *(f * model_nm for f in SIGMA_FACTOR_RANGE)))
        self._set_sigma(used / fine_nm)
        self.sigma_source = "movie spots"
        self.sigma_message = (f"unrolled: the movie's PSF sigma is {movie_nm:.0f} nm (median of "
                              f"{n} isolated spots), the model's {model_nm:.0f} nm: the solver "
                              f"uses {used:.0f} nm (--set sigma_nm=model keeps the model's)")
        emit(self.sigma_message, self.warn)

    def decide(self, run) -> dict[str, Any]:
        """Choose the PSF σ on the frames that ``run(self)`` gives (``localize`` and
        ``run``: :func:`~stormfold.localize.runner.decision_ranges`, frames spread over the
        movie; they are only collected, not solved), then start the movie's checks again
        with that σ kept: ``stormfold run`` does this also when it resumes, and gives the σ
        to its Dask workers. Returns the option that pins the choice."""
        self._probe = []
        try:
            run(self)
        finally:
            frames, self._probe = self._probe, None
        self.start_movie(self.warn)
        if not frames:
            return {}
        self._choose_sigma(np.concatenate([f for f, _ in frames]), frames[0][1])
        return {"sigma_nm": "model" if self.sigma_source.startswith("model")
                else round(self.sigma_nm, 6)}

    def reconstruct(self, photons: np.ndarray) -> np.ndarray:
        """x_K for frames (B, rows, cols) in photons → (B, rows·L, cols·L) float32."""
        photons = np.asarray(photons, dtype=np.float32)
        if photons.ndim != 3:
            raise UserError(f"expected frames (n, rows, cols), got shape {photons.shape}")
        out = np.empty((photons.shape[0], photons.shape[1] * self.upsampling,
                        photons.shape[2] * self.upsampling), np.float32)
        with torch.inference_mode():
            for a in range(0, len(photons), self.chunk_frames):
                y = torch.from_numpy(photons[a:a + self.chunk_frames]).to(self.device)
                out[a:a + len(y)] = self.solver(y, self._background_arg()).cpu().numpy()
        return out

    def _background_arg(self) -> Any:
        if self.background is None or self.background in ("learned", "given"):
            return None
        if self.background == "estimate":
            return "estimate"
        return self.background

    def process(self, photons: np.ndarray, first_frame: int, pixel_size_nm: float) -> EngineOutput:
        if self._probe is not None:  # decide(): the frames are only collected
            if sum(len(f) for f, _ in self._probe) * photons[0].size < PROBE_COLLECT_PIXELS:
                self._probe.append((np.asarray(photons, np.float32), pixel_size_nm))
            return EngineOutput(locs=empty_table(), superres=None)
        if not self.sigma_decided:
            self._choose_sigma(np.asarray(photons), pixel_size_nm)
        x = self.reconstruct(photons)
        locs = extract(x, self.threshold, first_frame, pixel_size_nm / self.upsampling,
                       self.method, self.connectivity, self.merge)
        self._check_low(locs[INTENSITY_COLUMN].to_numpy())
        self.domain_check(photons, len(locs), pixel_size_nm)
        self.spot_check(photons, pixel_size_nm)
        return EngineOutput(locs, x.sum(axis=0))

    def _check_low(self, intensity: np.ndarray) -> None:
        """Count the batch's faint localizations; warn once (see the module notes)."""
        if self.intensity_p05 is None or self.low_message is not None:
            return
        self._low[0] += int(np.count_nonzero(intensity < self.intensity_p05))
        self._low[1] += len(intensity)
        text = low_intensity_warning(*self._low, self.intensity_p05, self.threshold)
        if text is not None:
            self.low_message = text
            emit(text, self.warn)

    def training_camera(self) -> Camera | None:
        return self.camera

    def training_pixel_size_nm(self) -> float | None:
        return self.pixel_size_nm

    def describe(self) -> dict[str, Any]:
        s = self.solver
        return {"engine": self.name, "upsampling": self.upsampling, "method": self.method,
                "threshold_photons": self.threshold, "connectivity": self.connectivity,
                "merge": self.merge, "iterations": s.iterations, "fidelity": s.fidelity,
                "intensity_p05": self.intensity_p05,
                "background": self.background if self.background is not None else s.background_mode,
                "theta": {"rho": float(s.rho.mean()), "tau": float(s.tau),
                          "alpha_mean": float(s.alpha.mean())},
                "sigma_fine_px": float(s.op.sigma_fine_px), "psf_sigma_nm": self.sigma_nm,
                "psf_sigma_from": self.sigma_source}


def _parse_sigma(value: Any) -> str | float:
    if value in ("auto", "model"):
        return value
    lo, hi = GIVEN_SIGMA_NM
    if isinstance(value, (int, float)) and not isinstance(value, bool) \
            and np.isfinite(value) and lo <= value <= hi:
        return float(value)
    shown = f"{value:.3g}" if isinstance(value, float) else repr(value)
    raise UserError(f"sigma_nm must be auto, model or a PSF sigma from {lo:g} to {hi:g} nm, "
                    f"got {shown}")


def _parse_background(value: Any) -> str | float | None:
    if value is None or isinstance(value, (int, float)) and not isinstance(value, bool):
        if value is not None and not value >= 0:
            raise UserError(f"background must be ≥ 0 photons, got {value}")
        return None if value is None else float(value)
    if isinstance(value, str) and value in ("estimate", "learned", "given"):
        return value
    raise UserError(f"background option must be estimate, learned, given or a number of "
                    f"photons, got {value!r}")


def load_engine(spec: str | Path, meta: dict, device: Any = None, threshold: float | None = None,
                options: dict | None = None) -> UnrolledEngine:
    """Registry loader (``model.yaml`` ``engine: unrolled``)."""
    from stormfold.modelfile import model_section

    options = dict(options or {})
    user_threshold = threshold is not None
    unknown = sorted(set(options) - set(OPTIONS), key=str)
    if unknown:
        raise UserError(f"unknown option {unknown[0]!r} for the unrolled engine "
                        f"(known: {', '.join(OPTIONS)})")
    solver, meta = load_unrolled_model(spec, device or "cpu")
    if "pixel_size_nm" not in meta:
        raise UserError(f"{spec}: model.yaml has no pixel_size_nm")
    extraction = meta.get("extraction") or {}
    camera = None
    if isinstance(meta.get("camera"), dict):
        camera = model_section(Camera, meta["camera"], "camera", str(spec))
    merge = options.get("merge", extraction.get("merge", True))
    if not isinstance(merge, bool):
        raise UserError(f"merge must be true or false, got {merge!r}")
    try:
        connectivity = int(options.get("connectivity", extraction.get("connectivity", 8)))
        chunk = int(options.get("chunk_frames", 16))
    except (TypeError, ValueError):
        raise UserError("connectivity and chunk_frames must be integers") from None
    if threshold is None and extraction.get("threshold") is not None:
        threshold = extraction["threshold"]
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
                or not (np.isfinite(threshold) and threshold >= 0):
            raise UserError(f"{spec}: extraction.threshold must be a number ≥ 0 (photons per "
                            f"fine pixel), got {threshold!r}")
        threshold = float(threshold)
    floor = extraction.get("intensity_p05")
    if floor is not None and (isinstance(floor, bool) or not isinstance(floor, (int, float))
                              or not (np.isfinite(floor) and floor > 0)):
        raise UserError(f"{spec}: extraction.intensity_p05 must be a number > 0 or null, "
                        f"got {floor!r}")
    method = str(options.get("method", extraction.get("method", "components")))
    stored = str(extraction.get("method", "components"))
    if method != stored and not user_threshold:
        # a peaks threshold is a 3×3 sum of x_K, a components one a per-pixel level
        raise UserError(f"{spec}: this model's threshold is for method={stored}; with "
                        f"method={method} give --threshold (peaks: a 3×3 sum of x_K; "
                        f"components: a per-pixel level)")
    return UnrolledEngine(solver, float(meta["pixel_size_nm"]), threshold=threshold,
                          background=options.get("background"), camera=camera,
                          connectivity=connectivity, merge=merge, chunk_frames=chunk, meta=meta,
                          method=method, sigma_nm=options.get("sigma_nm", "auto"))
