"""Deep-STORM inference: batched, tiled prediction and localization extraction (SPEC §4).

Frames (photons) are normalised with the model's fixed normalisation, replicated ×L onto
the fine grid and passed through the network in batches bounded by a number of fine pixels.
Frames larger than ``tile_px`` camera pixels are cut into tiles whose cores are surrounded
by a margin of at least the receptive field (tiles are aligned to the network's pooling
grid and cropped at the image edges exactly as the whole frame would be), so the tiled
result equals the untiled one to float precision while memory does not grow with the frame
size. Negative outputs are clamped to 0. Localizations: 3×3 local maxima above
``threshold · target_scale``, 3×3 centre of gravity, confidence = 3×3 sum / target_scale
(:mod:`stormfold.localize.peaks`). A model with calibrated estimates
(:mod:`stormfold.deepstorm.estimates`) adds ``photons`` and ``uncertainty_nm``, both
estimates; without them the table has no such columns (nothing is filled in).

The super-resolved image returned per batch is the sum of the clamped predictions divided by
``target_scale`` (the unit of ``confidence``: a localization's 3×3 neighbourhood in the
image sums to its confidence).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from stormfold.deepstorm.brightness import MIN_DETECTIONS, BrightnessMatch
from stormfold.deepstorm.brightness import RANGE as BRIGHTNESS_RANGE
from stormfold.deepstorm.estimates import COLUMNS as ESTIMATED_COLUMNS
from stormfold.deepstorm.estimates import DeepStormEstimates
from stormfold.deepstorm.model import (MAX_CHANNELS, SIZE_MULTIPLE, DeepSTORM, build_model,
                                       count_parameters)
from stormfold.deepstorm.normalization import Normalization, upsample
from stormfold.device import resolve_precision
from stormfold.errors import UserError
from stormfold.localize.background import BackgroundMatch, training_reference
from stormfold.localize.domain import DomainCheck, TrainingDomain, emit
from stormfold.localize.engine import Engine, EngineOutput
from stormfold.localize.spots import SpotCheck, SpotReference
from stormfold.localize.peaks import find_peaks, peaks_to_table, window_sum
from stormfold.physics.camera import Camera
from stormfold.table import empty_table

ENGINE = "deepstorm"
#: Measured spot width and photons over the training simulation's outside which the
#: spot check warns (`experiments/spot_checks.py`, `experiments/results/spot_checks.md`:
#: the shipped model, trained at 2,250 photons and σ 110 nm, scores JI@100 0.88 / 0.97 /
#: 0.98 / 0.90 / 0.73 at 1,000 / 1,500 / 2,250 / 3,000 / 3,600 photons, 0.96 / 0.98 / 0.93 /
#: 0.87 at σ 70 / 90 / 140 / 150 nm).
SPOT_PHOTONS_RANGE = (0.5, 1.3)
SPOT_SIGMA_RANGE = (0.6, 1.3)
OFF_DOMAIN = ("the table may be badly wrong (Deep-STORM splits bright emitters and misses "
              "dim ones): use gridnet or a model trained for this movie")
#: What an elongated PSF does to this engine (:mod:`stormfold.localize.spots`).
ELONGATED = ("the network was trained on round PSFs: its positions lose precision "
             "and the most elongated spots are reported twice")
UPSAMPLINGS = (4, 8, 16)
#: decide() keeps at most this many pixels of the frames it is given (32 frames of 1024²),
#: of which the brightness measure takes a few frames spread over them.
PROBE_COLLECT_PIXELS = 32 * 1024 * 1024
#: Receptive-field half-width of the faithful network in fine pixels (52 / 2 = 26), rounded
#: up with one pooling cell (8) for the alignment of the three 2×2 max-pools.
RECEPTIVE_MARGIN_FINE = 40
DEFAULT_TILE_PX = 128
DEFAULT_BATCH_PIXELS = 2 ** 20
PRECISIONS = ("float32", "bfloat16", "auto")


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


class DeepStormEngine(Engine):
    """Deep-STORM as a localization engine.

    Parameters
    ----------
    model : DeepSTORM
        The network (weights loaded).
    upsampling : int
        Fine-grid factor L (4, 8 or 16).
    target_scale : float
        Scale of the training targets (100).
    normalization : Normalization
        The model's fixed input normalisation (photons → network input).
    threshold : float
        Detection threshold relative to ``target_scale`` (> 0).
    device : torch.device or str
        Where the network runs.
    tile_px : int
        Largest tile side in camera pixels, margins included; frames up to this size are not
        tiled. Memory per tile ∝ (tile_px·L)².
    batch_pixels : int
        Fine pixels per forward pass (tiles of several frames are batched up to this).
    precision : {"float32", "bfloat16", "auto"}
        Arithmetic of the forward pass. float32 (default) everywhere gives the same
        results; bfloat16 autocast is about twice as fast where bf16 is native (CPUs with
        AVX-512 BF16 or AMX, recent GPUs) at a small cost in precision, and several times
        slower where it is emulated (e.g. AVX2-only CPUs); ``auto`` picks bfloat16 exactly
        where it is native (:func:`stormfold.device.native_bf16`).
    pixel_size_nm : float, optional
        Camera pixel size the model was trained for.
    camera : Camera, optional
        Camera of the training data (used when a movie carries none).
    source : str, optional
        Where the model came from (for run.yaml).
    estimates : DeepStormEstimates, optional
        Calibrated photons and uncertainty tables (model.yaml ``estimates``); without them
        the tables have no ``photons`` / ``uncertainty_nm`` columns.
    domain : TrainingDomain, optional
        The training simulation (model.yaml ``training_data.simulation``): the first batch
        is checked against it with a one-line warning when clearly outside
        (:mod:`stormfold.localize.domain`); None checks nothing.
    """

    name = ENGINE

    def __init__(self, model: DeepSTORM, upsampling: int, target_scale: float,
                 normalization: Normalization, threshold: float,
                 device: torch.device | str = "cpu", tile_px: int = DEFAULT_TILE_PX,
                 batch_pixels: int = DEFAULT_BATCH_PIXELS, precision: str = "float32",
                 pixel_size_nm: float | None = None, camera: Camera | None = None,
                 source: str | None = None, estimates: DeepStormEstimates | None = None,
                 domain: TrainingDomain | None = None, background: BackgroundMatch | None = None,
                 brightness: BrightnessMatch | None = None):
        if upsampling not in UPSAMPLINGS:
            raise UserError(f"upsampling must be one of {UPSAMPLINGS}, got {upsampling}")
        if not threshold > 0:
            raise UserError(f"threshold must be > 0 (a fraction of target_scale), got {threshold}")
        if precision not in PRECISIONS:
            raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if batch_pixels < 1:
            raise UserError(f"batch_pixels must be ≥ 1, got {batch_pixels}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval().to(memory_format=torch.channels_last)
        self.upsampling = int(upsampling)
        self.target_scale = float(target_scale)
        self.normalization = normalization
        self.threshold = float(threshold)
        self.precision_requested = precision
        self.precision = resolve_precision(precision, self.device)
        self.batch_pixels = int(batch_pixels)
        # Tile geometry in camera pixels: every tile start is on the 8-fine-pixel pooling grid.
        self.align_px = SIZE_MULTIPLE // math.gcd(SIZE_MULTIPLE, self.upsampling)
        self.margin_px = _round_up(math.ceil(RECEPTIVE_MARGIN_FINE / self.upsampling),
                                   self.align_px)
        min_tile = 2 * self.margin_px + self.align_px
        if tile_px < min_tile:
            raise UserError(f"tile_px must be ≥ {min_tile} camera pixels at L={upsampling} "
                            f"(twice the receptive-field margin plus one cell), got {tile_px}")
        self.tile_px = int(tile_px)
        self._pixel_size_nm = pixel_size_nm
        self._camera = camera
        self.source = source
        self.estimates = estimates
        self.domain_check = DomainCheck(domain)
        self.spot_check = SpotCheck(ELONGATED, None if domain is None else SpotReference(
            sigma_nm=domain.sigma_nm, sigma_range=SPOT_SIGMA_RANGE, photons=domain.photons,
            photons_range=SPOT_PHOTONS_RANGE, consequence=OFF_DOMAIN))
        self.background = background
        self.brightness = brightness
        self.brightness_message: str | None = None
        self.warn = None
        self._probe: list[np.ndarray] | None = None  # decide(): the frames collected

    # ------------------------------------------------------------------ Engine API
    def start_movie(self, warn=None) -> None:
        super().start_movie(warn)
        self.warn = warn
        self.brightness_message = None
        if self.brightness is not None:
            self.brightness.reset()

    def movie_warnings(self) -> list[str]:
        return ([self.brightness_message] if self.brightness_message else []) + \
            super().movie_warnings()

    def decide(self, run) -> dict[str, Any]:
        """Measure the brightness on the frames that ``run(self)`` gives (``localize`` and
        ``run``: :func:`~stormfold.localize.runner.decision_ranges`, frames spread over the
        movie; they are only collected, not localized), then start the movie's checks
        again with the ratio kept: ``stormfold run`` does this also when it resumes, and
        gives the ratio to its Dask workers. Returns the option that pins the choice."""
        if self.brightness is None:
            return {}
        self._probe = []
        try:
            run(self)
        finally:
            frames, self._probe = self._probe, None
        self.start_movie(self.warn)
        if not frames:
            return {}
        self._choose_brightness(np.concatenate(frames))
        return {"brightness": float(self.brightness.ratio)}

    def _choose_brightness(self, photons: np.ndarray) -> None:
        def detect(frames: np.ndarray) -> tuple:
            locs = self.extract(self.predict(frames), 0, 1.0)  # positions in camera pixels
            return (locs["frame"].to_numpy(np.int64), np.floor(locs["y_nm"]).to_numpy(np.int64),
                    np.floor(locs["x_nm"]).to_numpy(np.int64))

        b = self.brightness
        ratio = b.choose(np.asarray(photons, np.float32), detect, self.background)
        if b.given is not None:
            return
        if b.measured is None:
            self.brightness_message = (
                f"Deep-STORM: the brightness could not be measured (fewer than "
                f"{MIN_DETECTIONS} emitters found in the frames it is measured on, also when "
                f"looked at up to 4× brighter): the frames are used as they are; if the "
                f"emitters are much brighter or dimmer than the model's training ones, give "
                f"--set brightness=R")
            emit(self.brightness_message, self.warn)
        elif ratio != 1.0:
            self.brightness_message = (
                f"Deep-STORM: the movie's emitters are {ratio:.2f}× as bright as the model's "
                f"training ones (signal per localization on {b.probe_frames} frames spread "
                f"over the movie): the frames are divided by {ratio:.2f} before the network "
                f"(--set brightness=none keeps them)")
            emit(self.brightness_message, self.warn)

    def training_camera(self) -> Camera | None:
        return self._camera

    def training_pixel_size_nm(self) -> float | None:
        return self._pixel_size_nm

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "model": self.source, "upsampling": self.upsampling,
                "threshold": self.threshold, "target_scale": self.target_scale,
                "tile_px": self.tile_px, "batch_pixels": self.batch_pixels,
                "precision": self.precision, "precision_requested": self.precision_requested,
                "device": str(self.device),
                "background": "none" if self.background is None else
                {"match": "excess over the training level subtracted",
                 "reference_photons": round(self.background.reference_photons, 3),
                 "tolerance_photons": round(self.background.tolerance_photons, 3)},
                "brightness": "none" if self.brightness is None else
                {"ratio": self.brightness.ratio, "measured": self.brightness.measured,
                 "given": self.brightness.given, "steps": self.brightness.steps,
                 "reference_signal_photons": self.brightness.reference},
                "superres_unit": "sum of predictions / target_scale",
                "columns_estimated": self.estimated_columns()}

    def estimated_columns(self) -> dict[str, str]:
        return dict(ESTIMATED_COLUMNS) if self.estimates is not None else {}

    def process(self, photons: np.ndarray, first_frame: int, pixel_size_nm: float) -> EngineOutput:
        if self.background is not None:  # the network knows only its training background
            photons = self.background(photons)
        ratio = 1.0
        if self._probe is not None:  # decide(): the frames are only collected
            if sum(len(f) for f in self._probe) * photons[0].size < PROBE_COLLECT_PIXELS:
                self._probe.append(np.asarray(photons, np.float32))
            return EngineOutput(locs=empty_table(), superres=None)
        if self.brightness is not None:  # ... and its training emitters' brightness
            if self.brightness.ratio is None:
                self._choose_brightness(photons)
            ratio = self.brightness.ratio
            if ratio != 1.0:
                photons = np.asarray(photons, np.float32) / np.float32(ratio)
        maps = self.predict(photons)
        locs = self.extract(maps, first_frame, pixel_size_nm)
        if ratio != 1.0 and "photons" in locs.columns:
            locs["photons"] = locs["photons"] * ratio  # the movie's photons, not the network's
        self.domain_check(photons, len(locs), pixel_size_nm)
        self.spot_check(photons, pixel_size_nm)
        superres = (maps.sum(0) / self.target_scale).cpu().numpy().astype(np.float32)
        return EngineOutput(locs=locs, superres=superres)

    # ------------------------------------------------------------------ pieces
    def extract(self, maps: torch.Tensor, first_frame: int, pixel_size_nm: float,
                threshold: float | None = None):
        """Localization table of predicted maps (n, rows·L, cols·L) (absolute frames)."""
        thr = self.threshold if threshold is None else threshold
        peaks = find_peaks(maps, thr * self.target_scale)
        columns = {}
        if self.estimates is not None:
            est = self.estimates
            integrated = window_sum(maps, peaks, est.window_fine_px) / self.target_scale
            confidence = peaks.mass.double().cpu().numpy() / self.target_scale
            columns = {"photons": est.photons(integrated.cpu().numpy()),
                       "uncertainty_nm": est.uncertainty_nm(confidence)}
        return peaks_to_table(peaks, first_frame, pixel_size_nm / self.upsampling,
                              confidence_scale=self.target_scale, **columns)

    def tiles(self, rows: int, cols: int) -> list[tuple[slice, slice, slice, slice]]:
        """Tiles of a (rows, cols) frame in camera pixels (rows, cols multiples of align_px).

        Returns (input rows, input cols, core rows within the tile, core cols within the
        tile) per tile; the cores partition the frame.
        """
        def axis(n: int) -> list[tuple[slice, slice]]:
            if n <= self.tile_px:
                return [(slice(0, n), slice(0, n))]
            core = self.tile_px - 2 * self.margin_px
            core -= core % self.align_px
            out = []
            for start in range(0, n, core):
                stop = min(start + core, n)
                lo, hi = max(0, start - self.margin_px), min(n, stop + self.margin_px)
                out.append((slice(lo, hi), slice(start - lo, stop - lo)))
            return out

        return [(ri, ci, rc, cc) for ri, rc in axis(rows) for ci, cc in axis(cols)]

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        if self.precision == "float32":
            y = self.model(x)
        else:
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                features = self.model.features(x)
            # The linear 1×1 output in float32: bf16 outputs would be coarsely quantised and
            # create flat tops that split into several 3×3 maxima.
            y = self.model.out(features.float())
        return y.float().clamp_(min=0.0)

    def predict(self, photons: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Clamped network output of frames (n, rows, cols) in photons → (n, rows·L, cols·L).

        The output is at ``target_scale`` (float32, on the engine's device).
        """
        if not torch.is_tensor(photons):
            photons = torch.from_numpy(np.asarray(photons, dtype=np.float32))
        frames = photons.to(self.device)
        if frames.ndim == 2:
            frames = frames[None]
        if frames.ndim != 3:
            raise UserError(f"frames must be (n, rows, cols), got shape {tuple(frames.shape)}")
        n, rows, cols = frames.shape
        L = self.upsampling
        x = self.normalization.apply(frames)
        # Pad (with zero input) to whole pooling cells; the padding is cropped afterwards.
        pr, pc = _round_up(rows, self.align_px) - rows, _round_up(cols, self.align_px) - cols
        if pr or pc:
            x = F.pad(x, (0, pc, 0, pr))
        out = torch.empty((n, (rows + pr) * L, (cols + pc) * L), dtype=torch.float32,
                          device=self.device)
        groups: dict[tuple[int, int], list] = {}
        for tile in self.tiles(rows + pr, cols + pc):
            ri, ci = tile[0], tile[1]
            groups.setdefault((ri.stop - ri.start, ci.stop - ci.start), []).append(tile)
        with torch.inference_mode():
            for (h, w), tiles in groups.items():
                per_pass = max(1, self.batch_pixels // (h * w * L * L))
                jobs = [(f, t) for t in tiles for f in range(n)]
                for k in range(0, len(jobs), per_pass):
                    chunk = jobs[k:k + per_pass]
                    batch = torch.stack([x[f, t[0], t[1]] for f, t in chunk])[:, None]
                    y = self._forward(upsample(batch, L))[:, 0]
                    for (f, (ri, ci, rc, cc)), yi in zip(chunk, y):
                        out[f, (ri.start + rc.start) * L:(ri.start + rc.stop) * L,
                            (ci.start + cc.start) * L:(ci.start + cc.stop) * L] = \
                            yi[rc.start * L:rc.stop * L, cc.start * L:cc.stop * L]
        return out[:, :rows * L, :cols * L]


# ---------------------------------------------------------------------- loading
_OPTIONS = {"tile_px": int, "batch_pixels": int, "precision": str, "background": str}


#: Background left in place above the training level, as a share of the training photons per
#: emitter (zerocost: 11 photons/px). Measured (`experiments/background_match.py`): tolerances
#: of 0, 11 and 20 photons/px gave the real demo movie JI@100 0.870, 0.878 and 0.878 (0.877
#: without matching), a 2/µm² movie with background 50 0.967, 0.970 and 0.958 (0.806).
BACKGROUND_TOLERANCE = 0.005


def background_match(meta: dict, mode: str, source: str) -> BackgroundMatch | None:
    """The background matching of ``--set background=match|none`` for a model (None: off, or
    a model trained on a movie, whose background level is not known)."""
    if mode not in ("match", "none"):
        raise UserError(f"Deep-STORM option background must be match or none, got {mode!r}")
    domain = TrainingDomain.from_meta(meta)
    data = meta.get("training_data")
    sim = data.get("simulation") if isinstance(data, dict) else None
    if mode == "none" or domain is None or not isinstance(sim, dict):
        return None
    reference = training_reference(sim)
    if reference is None:
        return None
    return BackgroundMatch(reference, BACKGROUND_TOLERANCE * domain.photons)


def brightness_match(meta: dict, mode: Any) -> BrightnessMatch | None:
    """The brightness matching of ``--set brightness=match|none|R`` (R: the movie's emitters
    over the training ones, > 0) for a model; None: off, or a model trained on a movie,
    whose training brightness is not known."""
    if isinstance(mode, (int, float)) and not isinstance(mode, bool):
        lo, hi = BRIGHTNESS_RANGE
        if not (np.isfinite(mode) and lo <= mode <= hi):  # review 22: 1e30 ran, found nothing
            raise UserError(f"Deep-STORM option brightness must be match, none or a ratio "
                            f"from {lo:g} to {hi:g}, got {mode!r}")
        return BrightnessMatch({}, given=float(mode))
    if mode not in ("match", "none"):
        raise UserError(f"Deep-STORM option brightness must be match, none or a ratio > 0, "
                        f"got {mode!r}")
    data = meta.get("training_data")
    sim = data.get("simulation") if isinstance(data, dict) else None
    if mode == "none" or not isinstance(sim, dict):
        return None
    stored = meta.get("brightness_reference")
    reference = None
    if isinstance(stored, dict):
        values = (stored.get("signal_photons"), stored.get("height_photons"))
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
               and v > 0 for v in values):
            reference = tuple(float(v) for v in values)
    return BrightnessMatch(sim, reference=reference)


def _require(meta: dict, key: str, source: str) -> Any:
    if key not in meta or meta[key] is None:
        raise UserError(f"{source}: model.yaml has no {key!r} (not a complete Deep-STORM model)")
    return meta[key]


def engine_from_meta(meta: dict, tensors: dict[str, torch.Tensor], device: Any = "cpu",
                     threshold: float | None = None, options: dict | None = None,
                     source: str = "model") -> DeepStormEngine:
    """Build the engine from a model's metadata and weights, refusing what does not fit."""
    from stormfold.modelfile import check_size, check_state_dict, model_section, stored_threshold

    if meta.get("engine") != ENGINE:
        raise UserError(f"{source}: model is for engine {meta.get('engine')!r}, not {ENGINE!r}")
    arch = _require(meta, "architecture", source)
    if not isinstance(arch, dict) or arch.get("arch") != "deepstorm":
        raise UserError(f"{source}: architecture {arch!r} is not 'deepstorm'")
    channels = arch.get("channels")
    if not (isinstance(channels, (list, tuple)) and len(channels) == 4
            and all(isinstance(c, int) and c > 0 for c in channels)):
        raise UserError(f"{source}: architecture.channels must be 4 positive integers, "
                        f"got {channels!r}")
    for c in channels:
        check_size(c, "architecture.channels", MAX_CHANNELS, source)
    upsampling = _require(meta, "upsampling", source)
    if upsampling not in UPSAMPLINGS:
        raise UserError(f"{source}: upsampling {upsampling!r} is not one of {UPSAMPLINGS}")
    target_scale = float(_require(meta, "target_scale", source))
    if not target_scale > 0:
        raise UserError(f"{source}: target_scale must be > 0, got {target_scale}")
    norm_data = _require(meta, "normalization", source)
    if not isinstance(norm_data, dict):
        raise UserError(f"{source}: normalization must be a mapping, got {norm_data!r}")
    normalization = model_section(Normalization, norm_data, "normalization", source)
    px = float(_require(meta, "pixel_size_nm", source))
    if not px > 0:
        raise UserError(f"{source}: pixel_size_nm must be > 0, got {px}")
    camera = None
    if isinstance(meta.get("camera"), dict):
        camera = model_section(Camera, meta["camera"], "camera", source)
    n_params = arch.get("n_parameters")
    model = build_model(arch)
    if n_params is not None and n_params != count_parameters(model):
        raise UserError(f"{source}: architecture.n_parameters is {n_params} but channels "
                        f"{channels} give {count_parameters(model)}")
    check_state_dict(model, tensors, source)
    model.load_state_dict(tensors)
    thr = threshold if threshold is not None else stored_threshold(
        _require(meta, "threshold", source), source, meaning=" (a fraction of target_scale)")
    opts = {}
    options = dict(options or {})
    brightness = brightness_match(meta, options.pop("brightness", "match"))
    for key, value in options.items():
        if key not in _OPTIONS:
            raise UserError(f"unknown Deep-STORM option {key!r} (valid: {', '.join(_OPTIONS)})")
        if not isinstance(value, _OPTIONS[key]) or isinstance(value, bool):
            raise UserError(f"Deep-STORM option {key} must be {_OPTIONS[key].__name__}, "
                            f"got {value!r}")
        opts[key] = value
    opts["background"] = background_match(meta, opts.pop("background", "match"), source)
    if opts["background"] is None and brightness is not None and brightness.given is None:
        # The measure assumes frames at the training background: off with its matching.
        brightness = None
    estimates = None
    if isinstance(meta.get("estimates"), dict) and "photons" in meta["estimates"]:
        estimates = DeepStormEstimates.from_meta(meta["estimates"], source)
    return DeepStormEngine(model, int(upsampling), target_scale, normalization, float(thr),
                           device=device if device is not None else "cpu", pixel_size_nm=px,
                           camera=camera, source=source, estimates=estimates,
                           domain=TrainingDomain.from_meta(meta), brightness=brightness,
                           **opts)


def load_engine(spec: str | Path, meta: dict, device: Any = None, threshold: float | None = None,
                options: dict | None = None) -> DeepStormEngine:
    """Loader named by ``model.yaml`` (``engine: deepstorm``): see the registry."""
    from stormfold.modelfile import load_model

    device = torch.device(device) if device is not None else torch.device("cpu")
    tensors, meta = load_model(spec, engine=ENGINE, device="cpu")
    return engine_from_meta(meta, tensors, device=device, threshold=threshold, options=options,
                            source=str(spec))
