"""Post-processing steps as one interface, single-step commands and whole chains.

A step (``drift``, ``link``, ``filter``, ``cluster``, ``render``, ``frc``) takes the table
and its parameters (a dataclass: :class:`DriftParams`, :class:`LinkParams`, ...) and
returns the new table, its figures and artefacts (drift table, plots, image, FRC curve)
*in memory* (:func:`run_step`); files are written only once every step has succeeded.

A chain (:func:`run_chain` in memory, :func:`~stormfold.postprocess.commands.postprocess_file`
from file to folder, the
``stormfold postprocess IN --out DIR --steps drift,link,filter,render --config F.yaml``
command, and the ``postprocess`` section of ``stormfold run``) runs steps in the order
given. Its configuration has one optional section per step with the fields of the
step's parameter dataclass, and may list the ``steps`` itself::

    steps: [drift, link, filter, render, frc]
    drift:  {method: rcc, bins: 10, pixel_nm: 20}
    link:   {radius_nm: 50, max_dark: 1, weight: photons}
    filter: {expr: "photons > 500", roi: [0, 0, 5000, 5000]}
    render: {pixel_nm: 10, method: gaussian, sigma: uncertainty, formats: [tif, png]}
    frc:    {pixel_nm: 5, split: random}

Files of a chain: ``drift.csv``/``drift.png``, ``clusters.csv``, ``render.tif``/``render.png``,
``frc.csv``/``frc.png`` for the steps that ran (:meth:`ChainResult.write`); the command
adds ``postprocessed.<ext>`` (the final table, format of the input) and
``postprocess.yaml`` (parameters and results of every step, input, version).
"""
from __future__ import annotations

import os
import reprlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import pandas as pd

from stormfold.config import from_dict, load_yaml, to_dict
from stormfold.errors import UserError, whole_number
from stormfold.io.tables import write_frames_csv
from stormfold.postprocess.cluster import ClusterParams, cluster
from stormfold.postprocess.drift import DriftParams, apply_drift, drift_to_apply, estimate_drift
from stormfold.postprocess.filters import FilterParams, filter_table
from stormfold.postprocess.frc import FrcParams, frc
from stormfold.postprocess.link import LinkParams, link
from stormfold.postprocess.render import RenderParams, count_inside, render, write_image
from stormfold.physics.geometry import FrameGeometry

PARAMS: dict[str, type] = {"drift": DriftParams, "link": LinkParams, "filter": FilterParams,
                           "cluster": ClusterParams, "render": RenderParams, "frc": FrcParams}
STEPS = tuple(PARAMS)


@dataclass
class Artefact:
    """Something a step produced besides the table.

    ``kind`` is ``"csv"`` (``value`` a DataFrame, its ``frame_columns`` 0-based in memory
    and written 1-based), ``"figure"`` (a matplotlib Figure) or ``"image"`` (a 2-D array
    with ``pixel_nm`` and ``metadata``).
    """

    name: str
    kind: str
    value: Any
    pixel_nm: Optional[float] = None
    metadata: Optional[dict] = None
    float_format: Optional[str] = None
    frame_columns: tuple = ()


@dataclass
class StepOutput:
    """Result of :func:`run_step`."""

    step: str
    table: pd.DataFrame
    results: dict
    artefacts: list = field(default_factory=list)
    summary: str = ""


@dataclass
class Context:
    """What the steps know about the camera: movie length and field of view (nm); and the
    first frame number of the file the user reads (``frame`` in a filter expression)."""

    n_frames: Optional[int] = None
    fov_nm: Optional[tuple[float, float]] = None
    frame_base: int = 0


# --------------------------------------------------------------------------- steps
def _drift(table: pd.DataFrame, p: DriftParams, ctx: Context) -> StepOutput:
    from stormfold.postprocess.plots import drift_figure

    n_frames = ctx.n_frames if ctx.n_frames and len(table) and \
        ctx.n_frames > int(table["frame"].max()) else None
    options = {k: v for k, v in to_dict(p).items() if k not in ("method", "on_unsupported")}
    if ctx.fov_nm is not None:
        options["field_nm"] = min(ctx.fov_nm)
    result = estimate_drift(table, p.method, n_frames=n_frames, **options)
    applied = drift_to_apply(result, p.on_unsupported)
    corrected = apply_drift(table, applied)
    s = dict(result.stats)
    reliability = result.reliability
    s["applied"] = reliability is None or reliability.applied
    verdict = "" if reliability is None or reliability.applied else \
        f" ({reliability.verdict}: not applied)"
    fig = drift_figure(result.drift, result.points,
                       title=f"drift ({p.method}): RMS {s['drift_rms_nm']:.1f} nm{verdict}")
    summary = (f"drift ({p.method}): RMS {s['drift_rms_nm']:.1f} nm, range "
               f"{s['drift_range_x_nm']:.1f} × {s['drift_range_y_nm']:.1f} nm")
    # An applied fiducial estimate keeps its RMS and range; RCC states its verdict always.
    if reliability is not None and (p.method == "rcc" or not reliability.applied):
        summary = f"drift ({p.method}): {reliability.summary()}"
    # drift.csv is what was subtracted: zeros when the estimate was not applied.
    return StepOutput("drift", corrected, s,
                      [Artefact("drift_table", "csv", applied, float_format="%.4f",
                                frame_columns=("frame",)),
                       Artefact("drift_plot", "figure", fig)], summary)


def _link(table: pd.DataFrame, p: LinkParams, ctx: Context) -> StepOutput:
    result = link(table, p.radius_nm, p.max_dark, p.weight)
    s = result.stats
    summary = (f"link: {s['n_in']} → {s['n_out']} localizations "
               f"({s['mean_detections']:.2f} detections per molecule)")
    return StepOutput("link", result.table, s, [], summary)


def _filter(table: pd.DataFrame, p: FilterParams, ctx: Context) -> StepOutput:
    if p.expr is None and p.roi is None and p.min_neighbours is None:
        raise UserError("filter: give an expression, an ROI or a density filter "
                        "(--expr, --roi, --min-neighbours)")
    out, s = filter_table(table, p.expr, p.roi, p.min_neighbours, p.radius_nm,
                          frame_base=ctx.frame_base)
    return StepOutput("filter", out, s, [], f"filter: kept {s['n_out']} of {s['n_in']}")


def _cluster(table: pd.DataFrame, p: ClusterParams, ctx: Context) -> StepOutput:
    labelled, summary_table, s = cluster(table, p.eps_nm, p.min_samples)
    summary = f"cluster: {s['n_clusters']} clusters, {s['n_noise']} noise localizations"
    return StepOutput("cluster", labelled, s,
                      [Artefact("clusters", "csv", summary_table,
                                frame_columns=("first_frame", "last_frame"))], summary)


def _render(table: pd.DataFrame, p: RenderParams, ctx: Context) -> StepOutput:
    sigma: Any = "uncertainty" if p.sigma == "uncertainty" else p.sigma_nm
    image = render(table, p.pixel_nm, p.method, sigma, ctx.fov_nm)
    drawn = count_inside(table, p.pixel_nm, image.shape)
    meta = {"kind": "render", "method": p.method, "pixel_nm": p.pixel_nm,
            "sigma": sigma if p.method == "gaussian" else None,
            "n_localizations": int(len(table)), "n_rendered": drawn}
    s = {"shape": list(image.shape), "pixel_nm": p.pixel_nm, "method": p.method,
         "n_localizations": int(len(table)), "n_rendered": drawn,
         "max_per_pixel": float(image.max())}
    summary = f"render: {image.shape[1]} × {image.shape[0]} pixels of {p.pixel_nm:g} nm"
    return StepOutput("render", table, s,
                      [Artefact("image", "image", image, p.pixel_nm, meta)], summary)


def _frc(table: pd.DataFrame, p: FrcParams, ctx: Context) -> StepOutput:
    from stormfold.postprocess.plots import frc_figure

    result = frc(table, p.pixel_nm, p.split, p.seed, p.block_frames, p.tukey_alpha,
                 p.smooth_rings, p.threshold)
    fig = frc_figure(result.curve, result.resolution_nm, p.threshold)
    value = ("not reached (finer than 2 pixels)" if result.resolution_nm is None
             else f"{result.resolution_nm:.1f} nm")
    return StepOutput("frc", table, result.stats,
                      [Artefact("frc_curve", "csv", result.curve),
                       Artefact("frc_plot", "figure", fig)], f"frc: resolution {value}")


_RUNNERS: dict[str, Callable[[pd.DataFrame, Any, Context], StepOutput]] = {
    "drift": _drift, "link": _link, "filter": _filter, "cluster": _cluster,
    "render": _render, "frc": _frc}


def step_params(step: str, values: Optional[dict] = None):
    """Parameter dataclass of ``step`` from a mapping (unknown keys are a UserError)."""
    if step not in PARAMS:
        raise UserError(f"unknown step {step!r}: choose from {', '.join(STEPS)}")
    if values is not None and not isinstance(values, dict):
        raise UserError(f"{step}: expected a mapping of parameters, got {values!r}")
    return from_dict(PARAMS[step], values or {}, step)


def run_step(step: str, table: pd.DataFrame, params: Any = None,
             context: Optional[Context] = None) -> StepOutput:
    """Run one step in memory (no files).

    Parameters
    ----------
    step : str
        One of :data:`STEPS`.
    table : pandas.DataFrame
        Localization table.
    params : dataclass or dict, optional
        The step's parameters (default: the dataclass defaults).
    context : Context, optional
        Movie length and field of view.
    """
    if not isinstance(params, PARAMS.get(step, ())):
        params = step_params(step, params)
    return _RUNNERS[step](table, params, context or Context())


def parse_steps(steps: str | Sequence[str]) -> list[str]:
    """``"drift,link"`` or a list → validated step names (no repeats; may be empty)."""
    if isinstance(steps, str):
        steps = steps.split(",")
    elif not isinstance(steps, (list, tuple)):
        raise UserError(f"steps: expected a list of step names, got {steps!r}")
    names = [str(s).strip() for s in steps if str(s).strip()]
    for name in names:
        if name not in PARAMS:
            raise UserError(f"unknown step {name!r}: choose from {', '.join(STEPS)}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(f"step {repeated[0]!r} given twice: each step runs once per chain")
    return names


def check_chain(config: Optional[str | Path | dict] = None,
                steps: Optional[str | Sequence[str]] = None) -> tuple[list[str], dict[str, Any]]:
    """Validate a chain: steps and their parameter dataclasses.

    Parameters
    ----------
    config : str, Path or dict, optional
        YAML file or mapping: an optional ``steps`` list and one optional section per
        step (the fields of its parameter dataclass).
    steps : str or list of str, optional
        Steps in order; overrides the configuration's ``steps``.

    Returns
    -------
    names : list of str
        The steps in order (empty when none are given).
    params : dict
        Step name → parameter dataclass, for every step named or configured.

    Raises
    ------
    UserError
        Unknown step or key, bad value, a step given twice.
    """
    data: Any = {}
    if config is not None:
        if not isinstance(config, (dict, str, os.PathLike)):
            raise UserError(f"the post-processing config must be a YAML file path or a dict of "
                            f"step sections, got {type(config).__name__} {reprlib.repr(config)} "
                            f"(step names go in steps=)")
        data = config if isinstance(config, dict) else load_yaml(config)
        data = {} if data is None else data
        if not isinstance(data, dict):
            raise UserError(f"{config}: expected a mapping with one section per step")
    unknown = sorted(set(data) - set(STEPS) - {"steps"}, key=str)
    if unknown:
        raise UserError(f"unknown post-processing key '{unknown[0]}' (valid keys: steps, "
                        f"{', '.join(STEPS)})")
    names = parse_steps(steps if steps is not None else data.get("steps") or [])
    params = {name: step_params(name, data.get(name)) for name in STEPS
              if name in names or name in data}
    return names, params


def check_chain_frames(config: Optional[str | Path | dict], n_frames: int,
                       source: str = "frames") -> list[Path]:
    """Fail before any work when the chain cannot run on ``n_frames`` frames (drift bins,
    FRC blocks); returns the files (relative paths) the chain writes."""
    names, params = check_chain(config)
    if "drift" in names and params["drift"].method == "rcc" and n_frames < params["drift"].bins:
        raise UserError(f"drift: {params['drift'].bins} time bins need at least as many frames; "
                        f"{source} gives {n_frames} (set drift.bins ≤ {n_frames}, or more frames)")
    if "frc" in names and params["frc"].split == "blocks" and \
            n_frames <= params["frc"].block_frames:
        raise UserError(f"frc: the blocks split needs more than block_frames "
                        f"({params['frc'].block_frames}) frames; {source} gives {n_frames}")
    paths = _chain_paths(Path(), names, params)
    return [p for ps in paths.values() for p in ps]


def check_fov(fov_nm: Any) -> tuple[float, float]:
    """``(width, height)`` of the field of view (nm): two positive finite numbers."""
    import math

    try:
        width, height = (float(v) for v in fov_nm)
    except (TypeError, ValueError):
        raise UserError(f"run_chain: fov_nm must be (width, height) in nm, got "
                        f"{fov_nm!r:.60}") from None
    if not all(math.isfinite(v) and v > 0 for v in (width, height)):
        raise UserError(f"run_chain: fov_nm must be two positive numbers of nm, got {fov_nm!r}")
    return width, height


@dataclass
class ChainResult:
    """Result of :func:`run_chain`.

    Attributes
    ----------
    table : pandas.DataFrame
        The table after the last step.
    steps : list of StepOutput
        Each step's output, in order.
    params : dict
        Step name → parameters used.
    log : dict
        Step name → one-line summary.
    outputs : dict
        What later stages (reports) use: ``"drift"`` → drift table; ``"frc"`` → dict of
        ``frequency_per_nm``, ``frc``, ``frc_smoothed``, ``resolution_nm``;
        ``"clusters"`` → cluster summary; ``"render"`` → image.
    """

    table: pd.DataFrame
    steps: list
    params: dict
    log: dict
    outputs: dict

    def record(self) -> dict:
        """Parameters and results of every step (YAML-safe)."""
        return {o.step: {"parameters": to_dict(self.params[o.step]), "results": o.results}
                for o in self.steps}

    def file_paths(self, out_dir: str | Path) -> list[Path]:
        """The files :meth:`write` will create in ``out_dir``."""
        paths = _chain_paths(Path(out_dir), [o.step for o in self.steps], self.params)
        return [p for ps in paths.values() for p in ps]

    def write(self, out_dir: str | Path) -> dict[str, str]:
        """Write the steps' artefacts (drift.csv/png, clusters.csv, render.tif/png,
        frc.csv/png) to ``out_dir``; returns artefact name → file name."""
        out_dir = Path(out_dir)
        paths = _chain_paths(out_dir, [o.step for o in self.steps], self.params)
        written: dict[str, str] = {}
        if paths:
            out_dir.mkdir(parents=True, exist_ok=True)
        for o in self.steps:
            for artefact in o.artefacts:
                for i, path in enumerate(paths[artefact.name]):
                    _write_artefact(artefact, path)
                    written[artefact.name if i == 0 else f"{artefact.name}_{path.suffix[1:]}"] = \
                        path.name
        return written


def run_chain(table: pd.DataFrame, config: Optional[str | Path | dict] = None,
              steps: Optional[str | Sequence[str]] = None,
              pixel_size_nm: Optional[float] = None,
              fov_nm: Optional[Sequence[float]] = None,
              n_frames: Optional[int] = None, progress: bool = False,
              geometry: Optional[FrameGeometry] = None, frame_base: int = 0) -> ChainResult:
    """Run a chain of steps on a table in memory (files: :meth:`ChainResult.write`).

    Parameters
    ----------
    table : pandas.DataFrame
        Localization table.
    config : str, Path or dict, optional
        See :func:`check_chain`.
    steps : str or list of str, optional
        Steps in order (default: the configuration's ``steps``; none: nothing to do).
    pixel_size_nm : float, optional
        Camera pixel size (nm); no step needs it (kept for callers that pass it).
    fov_nm : (width, height), optional
        Camera field of view (nm): the extent of renderings.
    n_frames : int, optional
        Movie length: the drift table covers every frame.
    progress : bool
        A progress bar over the steps (each step of 10⁷ localizations takes seconds).
    geometry : FrameGeometry, optional
        The movie's frames: gives ``fov_nm``.
    frame_base : {0, 1}
        First frame number of the file the user reads: ``frame`` in a filter expression
        counts from it (1 for a ThunderSTORM CSV, 0 for Picasso HDF5 or a table in memory).

    Returns
    -------
    ChainResult
    """
    from tqdm import tqdm

    if geometry is not None:
        fov_nm = geometry.fov_nm
    if pixel_size_nm is not None:
        from stormfold.io.metadata import check_camera_pixel_size

        check_camera_pixel_size(pixel_size_nm, "run_chain: pixel_size_nm")

    names, params = check_chain(config, steps)
    n_frames = None if n_frames is None else whole_number(n_frames, "run_chain: n_frames", 1)
    ctx = Context(n_frames, None if fov_nm is None else check_fov(fov_nm), frame_base)
    outputs: list[StepOutput] = []
    bar = tqdm(names, unit="step", desc="post-processing", disable=not progress or not names,
               leave=False)
    for name in bar:
        bar.set_postfix(step=name, locs=len(table))
        result = run_step(name, table, params[name], ctx)
        outputs.append(result)
        table = result.table
    bar.close()
    extra: dict[str, Any] = {}
    for o in outputs:
        for artefact in o.artefacts:
            if artefact.name == "drift_table":
                extra["drift"] = artefact.value
            elif artefact.name == "frc_curve":
                curve = artefact.value
                extra["frc"] = {"frequency_per_nm": curve["q_per_nm"].to_numpy(),
                                "frc": curve["frc"].to_numpy(),
                                "frc_smoothed": curve["frc_smoothed"].to_numpy(),
                                "resolution_nm": o.results["resolution_nm"],
                                "threshold": params["frc"].threshold}
            elif artefact.name == "clusters":
                extra["clusters"] = artefact.value
            elif artefact.name == "image":
                extra["render"] = artefact.value
    return ChainResult(table, outputs, {n: params[n] for n in names},
                       {o.step: o.summary for o in outputs}, extra)


# --------------------------------------------------------------------------- files
def _write_artefact(artefact: Artefact, path: Path) -> None:
    if artefact.kind == "csv":
        write_frames_csv(path, artefact.value, artefact.frame_columns, artefact.float_format)
    elif artefact.kind == "figure":
        from stormfold.postprocess.plots import save_figure

        save_figure(artefact.value, path)
    elif artefact.kind == "image":
        write_image(path, artefact.value, artefact.pixel_nm, artefact.metadata)
    else:  # pragma: no cover - programming error
        raise ValueError(f"unknown artefact kind {artefact.kind!r}")


def _chain_paths(out_dir: Path, names: list[str], params: dict[str, Any]) -> dict[str, list[Path]]:
    paths: dict[str, list[Path]] = {}
    if "drift" in names:
        paths["drift_table"] = [out_dir / "drift.csv"]
        paths["drift_plot"] = [out_dir / "drift.png"]
    if "cluster" in names:
        paths["clusters"] = [out_dir / "clusters.csv"]
    if "render" in names:
        paths["image"] = [out_dir / f"render.{fmt}" for fmt in dict.fromkeys(params["render"].formats)]
    if "frc" in names:
        paths["frc_curve"] = [out_dir / "frc.csv"]
        paths["frc_plot"] = [out_dir / "frc.png"]
    return paths
