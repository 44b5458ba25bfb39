"""Inference of the camera-grid network: batched, with per-frame feature reuse (SPEC §10).

A batch of frames (photons) is normalised, padded to the network's size multiple, and
each frame's features are computed once; the context windows (t−1, t, t+1) are built from
the stored features, so every frame costs one frame network and one context network. At
the movie's edges the edge frame is repeated. The runner hands the engine the frames just
before and after each batch (:meth:`GridnetEngine.process_with_context`), so results do
not depend on how the movie is cut into batches or chunks. Everything runs under
``torch.inference_mode`` with channels-last tensors.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from stormfold.errors import UserError
from stormfold.gridnet.decode import (DEFAULT_CLUSTER_RADIUS_PX, DEFAULT_P_KEEP, DEFAULT_P_RAW,
                                      Candidates, Decoder, split_starts, to_table)
from stormfold.gridnet.network import GridNet
from stormfold.gridnet.normalization import InputNormalization
from stormfold.gridnet.outputs import GridOutputs, activate
from stormfold.gridnet.sampler import DomainConfig, check_sigma
from stormfold.localize.background import flatten_structure
from stormfold.localize.classic.engine import NoiseModel
from stormfold.localize.domain import GRIDNET_DENSITY_MARGIN, DensityCheck, SigmaBoundCheck
from stormfold.localize.engine import Engine, EngineOutput
from stormfold.localize.spots import SpotCheck
from stormfold.localize.refine import DEFAULT_SIGMA_RANGE_PX, RefineOptions, refine_localizations
from stormfold.physics.camera import Camera

ENGINE = "gridnet"
#: What an elongated PSF does to this engine (:mod:`stormfold.localize.spots`).
ELONGATED = ("the network was trained on round PSFs: it reports elongated spots as "
             "pairs of emitters and its positions lose precision")
DEFAULT_BATCH_PIXELS = 2 ** 20
DEFAULT_TILE_PX = 384
#: A refined localization's uncertainty is max(√CRLB, this × the network's σ): the
#: refinement's RMSE over isolated emitters is 0.77× the network's at 0.5/µm². With the
#: phase-3 weights 0.8 gives std(z) 1.02–1.11 on fresh 0.5/µm² movies (0.7: 1.13–1.23;
#: docs/gridnet.md, "Refinement").
REFINED_SIGMA_SCALE = 0.8


def receptive_margin_px(levels: int) -> int:
    """Tile margin giving the untiled result: the receptive-field radius of the frame and
    context U-Nets together (r(1) = 2, r(L) = 6 + 2·r(L−1) px each: two convolutions, the
    down and up convolutions and the inner net at half resolution), plus 2, rounded up to
    the down-sampling grid."""
    r = 2
    for _ in range(levels - 1):
        r = 6 + 2 * r
    multiple = 2 ** (levels - 1)
    return -(-(2 * r + 2) // multiple) * multiple
#: Fine-grid factor of the rendered super-resolved image (a histogram of localizations).
RENDER_UPSAMPLING = 8


def _as_tensor(frames, device) -> torch.Tensor:
    if not torch.is_tensor(frames):
        frames = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32))
    return frames.to(device=device, dtype=torch.float32)


def sample_outputs(model: GridNet, normalization: InputNormalization,
                   frames: torch.Tensor) -> GridOutputs:
    """Outputs of the middle frame of each sample (batch, T, rows, cols) in photons.

    The training path (gradients flow; call under ``torch.inference_mode`` to evaluate).
    Rows and columns must be multiples of the network's size multiple.
    """
    b, k, h, w = frames.shape
    x, offsets = normalization.apply(frames.reshape(b * k, h, w))
    x = x.reshape(b, k, h, w).contiguous(memory_format=torch.channels_last)
    raw = model(x)
    return activate(raw, offsets.reshape(b, k)[:, k // 2], normalization.scale_photons)


def _pad_to(x: torch.Tensor, multiple: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    # Zero input is the frame's median level: padding looks like empty background.
    return F.pad(x, (0, pw, 0, ph)) if ph or pw else x


def _density_check(domain: DomainConfig | None, source: str | None) -> DensityCheck | None:
    """The first-batch density warning, above :data:`GRIDNET_DENSITY_MARGIN` × the largest
    training density (None without a training domain)."""
    if domain is None:
        return None
    top = float(domain.density_per_um2[1])
    return DensityCheck(GRIDNET_DENSITY_MARGIN * top, (
        f"above the {top:g}/µm² {source or 'the model'} was trained for; accuracy drops "
        f"(simulations: JI@100 nm 0.78 at 12/µm², 0.69 at 20, 0.60 at 30) and the count "
        f"falls short above ~15/µm²"))


class GridnetEngine(Engine):
    """The camera-grid network as a localization engine.

    Parameters
    ----------
    model : GridNet
        The network (weights loaded).
    normalization : InputNormalization
    threshold : float
        Minimum score (3×3 sum of p) of a localization.
    p_raw : float
        Minimum p of a candidate pixel.
    p_keep : float
        Pixels with p ≥ p_keep are detections even when not a 3×3 maximum (> 1: off).
    device : torch.device or str
    batch_pixels : int
        Camera pixels per forward pass (bounds memory).
    tile_px : int
        Largest tile side (camera pixels, margins included): larger frames are cut into
        tiles with a margin of the receptive field, so memory does not grow with the frame
        size; the result equals the untiled one.
    temporal : bool
        Use the neighbouring frames (False feeds every frame as its own neighbour, as at a
        movie edge).
    domain : DomainConfig, optional
        Training domain (for the σ check).
    sigma_nm : float, optional
        The movie's PSF σ: refused when outside the training range (checked per movie).
    pixel_size_nm : float, optional
        Pixel size a camera-specific model was trained for (None: any).
    camera : Camera, optional
        Camera of the training simulation (used when a movie carries none).
    source : str, optional
    refine : RefineOptions, optional
        Joint Poisson-MLE refinement of the decoded localizations
        (:mod:`stormfold.localize.refine`; default: none). It uses the noise model of the
        camera given by :meth:`set_camera`, and ``sigma_nm`` as a fixed PSF σ when given,
        else fits σ per emitter within the training domain's range; then a one-line
        warning is given when many fitted σ sit at a bound of that range
        (:class:`stormfold.localize.domain.SigmaBoundCheck`). A second one when the first
        batch is denser than the training domain allows (:class:`DensityCheck`,
        ``density_check``).
    """

    name = ENGINE
    upsampling = RENDER_UPSAMPLING

    def __init__(self, model: GridNet, normalization: InputNormalization, threshold: float,
                 p_raw: float = DEFAULT_P_RAW, p_keep: float = DEFAULT_P_KEEP,
                 decoder: str = "peaks", radius_px: float = DEFAULT_CLUSTER_RADIUS_PX,
                 device: torch.device | str = "cpu",
                 batch_pixels: int = DEFAULT_BATCH_PIXELS, tile_px: int = DEFAULT_TILE_PX,
                 temporal: bool = True, flatten: bool = True,
                 domain: DomainConfig | None = None, sigma_nm: float | None = None,
                 pixel_size_nm: float | None = None, camera: Camera | None = None,
                 source: str | None = None, refine: RefineOptions | None = None):
        if not 0 < threshold <= 1:
            raise UserError(f"gridnet threshold must be in (0, 1] (a detection probability), "
                            f"got {threshold}")
        if batch_pixels < 1:
            raise UserError(f"batch_pixels must be ≥ 1, got {batch_pixels}")
        self.decoder = Decoder(str(decoder), float(p_raw), float(p_keep), float(radius_px))
        self.decoder.validate()
        # The network's outputs are exact up to the receptive-field margin; clusters read
        # components up to 2·⌈2 + r⌉ px beyond a core pixel (its neighbours' densities).
        reach = 2 * int(math.ceil(2.0 + self.decoder.radius_px)) + 2 \
            if self.decoder.method == "clusters" else 0
        multiple = 2 ** (model.config.levels - 1)
        self.margin_px = receptive_margin_px(model.config.levels) + -(-reach // multiple) * multiple
        if tile_px < 2 * self.margin_px + 16:
            raise UserError(f"tile_px must be ≥ {2 * self.margin_px + 16} (twice the margin of "
                            f"the receptive field and the decoder, plus 16), got {tile_px}")
        self.tile_px = int(tile_px)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval().to(memory_format=torch.channels_last)
        self.normalization = normalization
        self.threshold = float(threshold)
        self.batch_pixels = int(batch_pixels)
        self.temporal = bool(temporal)
        self.flatten = bool(flatten)
        self.domain = domain
        self.sigma_nm = sigma_nm
        self._pixel_size_nm = pixel_size_nm
        self._camera = camera
        self.source = source
        self.refine = (refine or RefineOptions()).validate()
        # Without a given σ the refinement fits one per emitter within the model's range:
        # many at a bound mean the movie's PSF is outside it (one warning).
        self.domain_check = SigmaBoundCheck(tuple(domain.sigma_px) if domain is not None
                                            else DEFAULT_SIGMA_RANGE_PX)
        self.density_check = _density_check(domain, source)
        self.spot_check = SpotCheck(ELONGATED)
        # Until the runner names the movie's camera: the training camera, else an ideal one.
        self.noise = NoiseModel.from_camera(camera or Camera())
        self.context_frames = model.config.context_frames
        self.temporal_context = self.context_frames // 2 if self.temporal else 0

    # ------------------------------------------------------------------ Engine API
    def training_camera(self) -> Camera | None:
        return self._camera

    def set_camera(self, camera: Camera) -> None:
        """The refinement's likelihood uses the noise model of the movie's camera."""
        self.noise = NoiseModel.from_camera(camera)

    def training_pixel_size_nm(self) -> float | None:
        return self._pixel_size_nm

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "model": self.source, "threshold": self.threshold,
                "decoder": self.decoder.metadata(), "refine": self.refine.metadata(),
                "noise_model": {"counts_per_photon": self.noise.counts_per_photon,
                                "gamma": self.noise.gamma} if self.refine.active else None,
                "context_frames": self.context_frames,
                "temporal": self.temporal, "flatten": self.flatten,
                "batch_pixels": self.batch_pixels,
                "tile_px": self.tile_px,
                "device": str(self.device), "sigma_nm": self.sigma_nm,
                "superres_unit": f"histogram of localizations at pixel/{self.upsampling}"}

    def check_pixel_size(self, pixel_size_nm: float) -> None:
        """Refuse a movie whose PSF σ (if given) is outside the model's σ range in pixels."""
        if self.sigma_nm is not None and self.domain is not None:
            check_sigma(self.sigma_nm, pixel_size_nm, self.domain, self.source or "the model")

    def process(self, photons: np.ndarray, first_frame: int, pixel_size_nm: float) -> EngineOutput:
        return self.process_with_context(photons, None, None, first_frame, pixel_size_nm)

    def process_with_context(self, photons: np.ndarray, before: np.ndarray | None,
                             after: np.ndarray | None, first_frame: int,
                             pixel_size_nm: float) -> EngineOutput:
        """Localize a batch given the frames just before and after it (None at movie edges)."""
        self.check_pixel_size(pixel_size_nm)
        parts = []
        # The network saw only smooth backgrounds (±30 %): a bright blob or a steep gradient
        # is flattened for it; the refinement fits each emitter's background on the raw frames.
        net_in = (flatten_structure(photons), flatten_structure(before),
                  flatten_structure(after)) if self.flatten else (photons, before, after)
        for out, (r0, c0), (rc, cc) in self._tile_outputs(*net_in):
            cand = self.decoder.candidates(out)
            inside = (cand.row >= rc.start) & (cand.row < rc.stop) & \
                (cand.col >= cc.start) & (cand.col < cc.stop) & (cand.score >= self.threshold)
            cand = cand.select(inside)
            cand.x_px += c0
            cand.y_px += r0
            parts.append(cand)
        cand = Candidates(*(torch.cat([getattr(c, f) for c in parts])
                            for f in Candidates.__dataclass_fields__))
        order = torch.argsort(cand.index, stable=True)
        cand = cand.select(order)
        if self.refine.active:
            cand = self._refine(cand, photons, pixel_size_nm)
        locs = to_table(cand, first_frame, pixel_size_nm)
        if self.density_check is not None:
            self.density_check(np.shape(photons), len(locs), pixel_size_nm)
        self.spot_check(photons, pixel_size_nm)
        return EngineOutput(locs=locs, superres=None)

    def _refine(self, cand: Candidates, photons, pixel_size_nm: float) -> Candidates:
        """``cand`` with the positions, photons, backgrounds and position uncertainties of
        the joint MLE refinement where it is accepted, without the emitters it dropped, and
        a second emitter after each one it split in two (sorted by frame)."""
        frames = _as_tensor(photons, "cpu")
        if frames.ndim == 2:
            frames = frames[None]
        s = self.noise.counts_per_photon
        sigma_px = self.sigma_nm / pixel_size_nm if self.sigma_nm is not None else None
        sigma_range = tuple(self.domain.sigma_px) if self.domain is not None else \
            DEFAULT_SIGMA_RANGE_PX
        x0, y0 = split_starts(cand)
        with torch.inference_mode():
            res = refine_localizations(
                frames * s, cand.index.cpu(), x0.cpu(), y0.cpu(),
                cand.photons.cpu() * s, cand.sigma_x_px.cpu(), cand.sigma_y_px.cpu(),
                self.noise.gamma, self.refine, sigma_px, sigma_range,
                self.domain.photons[1] * s if self.domain is not None else None)
        if sigma_px is None:
            self.domain_check(res.sigma_px[res.accepted & ~res.split].numpy())
        ok = res.accepted.to(cand.x_px.device)
        cand.x_px = torch.where(ok, res.x_px.to(cand.x_px), cand.x_px)
        cand.y_px = torch.where(ok, res.y_px.to(cand.y_px), cand.y_px)
        cand.photons = torch.where(ok, (res.counts / s).to(cand.photons), cand.photons)
        cand.bg = torch.where(ok, (res.bg / s).to(cand.bg), cand.bg)
        # The fit's Cramér–Rao bound is the error of an isolated emitter but knows nothing
        # of neighbours it may have merged with, which the network's σ does; the refinement
        # cuts the network's error by about a fifth (docs/gridnet.md, "Refinement").
        net_sigma = {name: getattr(cand, name) for name in ("sigma_x_px", "sigma_y_px")}
        # A split pair's bound comes from its joint two-emitter fit and already knows the
        # neighbour; the network's σ was that of the merged pair.
        split_rows = res.split.to(cand.x_px.device)
        for name, crlb in (("sigma_x_px", res.crlb_x_px2), ("sigma_y_px", res.crlb_y_px2)):
            net = net_sigma[name]
            bound = crlb.to(net).clamp_min(0).sqrt().nan_to_num(0.0)
            refined = torch.where(split_rows, bound, torch.maximum(bound, REFINED_SIGMA_SCALE * net))
            setattr(cand, name, torch.where(ok, refined, net))
        split = torch.nonzero(res.split).squeeze(1).to(cand.x_px.device)
        # Copies of a bright spot merged into one (merge test) and hot pixels (PSF-shape
        # test) are not emitters (stormfold.localize.merge); they are never split.
        kept = cand.select(~res.dropped.to(cand.x_px.device))
        if split.numel() == 0:
            return kept
        # The second emitter of a split keeps the first's detection (frame, confidence).
        extra = cand.select(split)
        extra.x_px = res.x2_px[split.cpu()].to(extra.x_px)
        extra.y_px = res.y2_px[split.cpu()].to(extra.y_px)
        extra.photons = (res.counts2[split.cpu()] / s).to(extra.photons)
        for name, crlb in (("sigma_x_px", res.crlb2_x_px2), ("sigma_y_px", res.crlb2_y_px2)):
            setattr(extra, name, crlb[split.cpu()].to(extra.x_px.device).clamp_min(0).sqrt().float())
        both = Candidates(*(torch.cat([getattr(kept, f), getattr(extra, f)])
                            for f in Candidates.__dataclass_fields__))
        return both.select(torch.argsort(both.index, stable=True))

    # ------------------------------------------------------------------ pieces
    def outputs(self, photons, before=None, after=None) -> GridOutputs:
        """Per-pixel outputs of the frames ``photons`` (n, rows, cols), assembled from tiles.

        ``before``/``after`` hold up to ``temporal_context`` frames preceding/following
        the batch in the movie; missing ones (movie edges) are replaced by repeating the
        edge frame.
        """
        full = None
        for out, (r0, c0), (rc, cc) in self._tile_outputs(photons, before, after):
            if full is None:
                n, rows, cols = self._shape
                full = {f: torch.empty((n, rows, cols), device=self.device)
                        for f in GridOutputs.__dataclass_fields__}
            for f in full:
                full[f][:, r0 + rc.start:r0 + rc.stop, c0 + cc.start:c0 + cc.stop] = \
                    getattr(out, f)[:, rc, cc]
        return GridOutputs(**full)

    def tiles(self, rows: int, cols: int) -> list[tuple[slice, slice, slice, slice]]:
        """Tiles of a padded (rows, cols) frame: (input rows, input cols, core rows within
        the tile, core cols within the tile); the cores partition the frame. Tiles start on
        even pixels so the network's down-sampling grid matches the whole frame's."""
        margin, multiple = self.margin_px, self.model.config.size_multiple

        def axis(n: int) -> list[tuple[slice, slice]]:
            if n <= self.tile_px:
                return [(slice(0, n), slice(0, n))]
            core = self.tile_px - 2 * margin
            core -= core % multiple
            out = []
            for start in range(0, n, core):
                stop = min(start + core, n)
                lo, hi = max(0, start - margin), min(n, stop + margin)
                out.append((slice(lo, hi), slice(start - lo, stop - lo)))
            return out

        return [(ri, ci, rc, cc) for ri, rc in axis(rows) for ci, cc in axis(cols)]

    def _tile_outputs(self, photons, before, after):
        """Yield (outputs of a tile incl. margins, tile origin (row, col), core slices).

        The normalisation offsets are per whole frame; every tile's outputs cover the
        batch's frames (n of them)."""
        core = _as_tensor(photons, self.device)
        if core.ndim == 2:
            core = core[None]
        if core.ndim != 3 or core.shape[0] == 0:
            raise UserError(f"frames must be (n, rows, cols), got shape {tuple(core.shape)}")
        n, rows, cols = core.shape
        self._shape = (n, rows, cols)
        k = self.temporal_context
        parts = [core]
        nb = na = 0
        if k and before is not None and len(before):
            b = _as_tensor(before, self.device)[-k:]
            parts.insert(0, b)
            nb = b.shape[0]
        if k and after is not None and len(after):
            a = _as_tensor(after, self.device)[:k]
            parts.append(a)
            na = a.shape[0]
        frames = torch.cat(parts) if len(parts) > 1 else core
        half = self.context_frames // 2
        with torch.inference_mode():
            x, offsets = self.normalization.apply(frames)
            x = _pad_to(x, self.model.config.size_multiple)
            offsets = offsets[nb:nb + n]
            for ri, ci, rc, cc in self.tiles(*x.shape[-2:]):
                # Cores that are only padding hold nothing to localize.
                rc = slice(rc.start, min(rc.stop, rows - ri.start))
                cc = slice(cc.start, min(cc.stop, cols - ci.start))
                if rc.stop <= rc.start or cc.stop <= cc.start:
                    continue
                xt = x[:, ri, ci]
                h, w = xt.shape[-2:]
                per_pass = max(1, self.batch_pixels // (h * w))
                feats = torch.cat([self.model.features(xt[i:i + per_pass].contiguous())
                                   .contiguous(memory_format=torch.channels_last)
                                   for i in range(0, xt.shape[0], per_pass)])
                if half and self.temporal:
                    # Movie edges: repeat the edge frame (i.e. its features).
                    lead = feats[:1].expand(half - nb, -1, -1, -1)
                    tail = feats[-1:].expand(half - na, -1, -1, -1)
                    feats = torch.cat([lead, feats, tail])
                fields = {f: [] for f in GridOutputs.__dataclass_fields__}
                for i in range(0, n, per_pass):
                    j = min(n, i + per_pass)
                    if half and self.temporal:
                        windows = self.model.window_features(feats[i:j + 2 * half])
                    elif half:
                        windows = torch.cat([feats[nb + i:nb + j]] * self.context_frames, dim=1)
                    else:
                        windows = feats[nb + i:nb + j]
                    raw = self.model.head_from_windows(
                        windows.contiguous(memory_format=torch.channels_last))
                    out = activate(raw, offsets[i:j], self.normalization.scale_photons)
                    for f in fields:
                        fields[f].append(getattr(out, f))
                yield (GridOutputs(**{f: torch.cat(v) for f, v in fields.items()}),
                       (ri.start, ci.start), (rc, cc))
