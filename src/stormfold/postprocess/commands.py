"""The post-processing commands from file to files: one step (``stormfold drift|link|filter|
cluster|render|frc``, :func:`run_command`) or a chain (``stormfold postprocess``,
:func:`postprocess_file`).

Everything that can be checked is checked before the table is read for work: the step's
parameters, the output names (never the input or its sidecar, never a folder), the format.
The files of one command are one set: written into a hidden staging folder and moved in
together — a table with its side files (``OUT_drift.csv``, ``OUT_clusters.csv``) and its
record (``OUT.yaml``, moved last: :class:`~stormfold.io.outputs.OutputFiles`), or a folder
completed by ``manifest.json`` (``frc``, ``postprocess``:
:class:`~stormfold.io.outputs.OutputFolder`). On an error nothing is left.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from stormfold.config import to_dict
from stormfold.errors import UserError
from stormfold.io.outputs import OutputFiles, OutputFolder
from stormfold.io.tables import table_format
from stormfold.postprocess import files
from stormfold.postprocess.chain import (PARAMS, ChainResult, Context, StepOutput, _chain_paths,
                                         _write_artefact, check_chain, run_chain, run_step,
                                         step_params)


def _single_paths(step: str, out: Path) -> dict[str, Path]:
    """Where a single-step command writes its artefacts, from its --out."""
    stem = out.stem
    if step == "drift":
        return {"drift_table": out.with_name(f"{stem}_drift.csv"),
                "drift_plot": out.with_name(f"{stem}_drift.png")}
    if step == "cluster":
        return {"clusters": out.with_name(f"{stem}_clusters.csv")}
    if step == "render":
        return {"image": out}
    if step == "frc":
        return {"frc_curve": out / "frc.csv", "frc_plot": out / "frc.png"}
    return {}


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} exists and is not a folder")


def _table_bytes(src: files.InputTable, copies: int = 2) -> float:
    """Disk space of ``copies`` tables the size of the input (a rough bound)."""
    try:
        return copies * float(src.path.stat().st_size) + 1e6
    except OSError:
        return 1e6


def run_command(step: str, source: str | Path, out: str | Path, params: Any = None,
                pixel_size_nm: Optional[float] = None,
                command: Optional[list[str]] = None) -> tuple[StepOutput, list[Path]]:
    """One step from file to files (``stormfold drift|link|filter|cluster|render|frc``).

    Parameters
    ----------
    step : str
        The step.
    source : str or Path
        Input table (``.csv`` or ``.hdf5``).
    out : str or Path
        Output table (``drift``, ``link``, ``filter``, ``cluster``; format by extension),
        image (``render``: ``.tif`` or ``.png``) or folder (``frc``).
    params : dataclass or dict, optional
        The step's parameters.
    pixel_size_nm : float, optional
        Camera pixel size (nm) for Picasso files without one.
    command : list of str, optional
        The command line, recorded in the ``frc`` folder's manifest.

    Returns
    -------
    output : StepOutput
    written : list of Path
        Every file written (tables, artefacts, YAML record or sidecar).

    Raises
    ------
    UserError
        Bad input, parameters or outputs — before anything is written.
    """
    out = Path(out)
    params = params if isinstance(params, PARAMS.get(step, ())) else step_params(step, params)
    src = files.read_input(source, pixel_size_nm)
    artefact_paths = _single_paths(step, out)
    if step == "frc":
        _check_out_dir(out)
        record = out / "frc.yaml"
        planned = [*artefact_paths.values(), record]
        target: Any = OutputFolder(out, "frc", [p.name for p in planned], src.protected())
    else:
        if step == "render":
            if out.suffix.lower() not in (".tif", ".tiff", ".png"):
                raise UserError(f"--out {out}: a rendering is written as .tif or .png")
            planned = [out]
        else:
            table_format(out)
            files.check_table_output(out, src, pixel_size_nm)
            planned = [*artefact_paths.values(), out]
        record = files.record_path(out)
        planned.append(record)
        target = OutputFiles(planned, src.protected(), _table_bytes(src))
    files.check_outputs(src, planned)
    target.check()

    result = run_step(step, src.table, params, Context(src.n_frames, src.fov_nm, src.frame_base))

    with target:
        for artefact in result.artefacts:
            _write_artefact(artefact, target.path(artefact_paths[artefact.name].name))
        finals = [artefact_paths[a.name] for a in result.artefacts]
        outputs = [*finals] + ([] if step in ("frc", "render") else [out])
        rec = files.make_record(step, src, params, result.results, outputs)
        if step in ("frc", "render"):
            files.write_record(target.path(record.name), rec)
        else:
            files.write_output_table(target.path(out.name), result.table, src, rec,
                                     pixel_size_nm)
        if step == "frc":
            target.commit(to_dict(params), command)
            written = [*finals, record]
        else:
            written = target.commit()
    return result, written


def postprocess_file(source: str | Path, out_dir: str | Path,
                     steps: Optional[str | Sequence[str]] = None,
                     config: Optional[str | Path | dict] = None,
                     pixel_size_nm: Optional[float] = None, progress: bool = False,
                     command: Optional[list[str]] = None) -> tuple[ChainResult, list[Path]]:
    """``stormfold postprocess``: run a chain on a table file and write ``out_dir``.

    Parameters
    ----------
    source : str or Path
        Input table (``.csv`` or ``.hdf5``).
    out_dir : str or Path
        Output folder (see the module docstring of :mod:`stormfold.postprocess.chain` for
        its files).
    steps : str or list of str, optional
        Steps in order (``"drift,link,filter,render"``); default: ``steps`` of the config.
    config : str, Path or dict, optional
        YAML file (or mapping) with one section per step.
    pixel_size_nm : float, optional
        Camera pixel size (nm) for Picasso files without one.
    progress : bool
        A progress bar over the steps.
    command : list of str, optional
        The command line, recorded in the folder's manifest.

    Returns
    -------
    result : ChainResult
    written : list of Path
        Every file written.

    Raises
    ------
    UserError
        Bad input, configuration or outputs — before anything is written.
    """
    out_dir = Path(out_dir)
    names, params = check_chain(config, steps)
    if not names:
        raise UserError("no steps given: e.g. --steps drift,link,filter,render")
    _check_out_dir(out_dir)
    src = files.read_input(source, pixel_size_nm)
    table_path = out_dir / f"postprocessed{src.path.suffix.lower()}"
    files.check_table_output(table_path, src, pixel_size_nm)
    record_path = out_dir / "postprocess.yaml"
    artefacts = [p for ps in _chain_paths(out_dir, names, params).values() for p in ps]
    planned = [table_path, files.record_path(table_path), record_path, *artefacts]
    files.check_outputs(src, planned)
    protected = [*src.protected(), config if isinstance(config, (str, Path)) else None]
    target = OutputFolder(out_dir, "postprocess", [p.name for p in planned], protected,
                          _table_bytes(src)).check()

    result = run_chain(src.table, {n: to_dict(p) for n, p in params.items()}, names,
                       src.pixel_size_nm, src.fov_nm, src.n_frames, progress=progress,
                       frame_base=src.frame_base)

    with target:
        staging = target.open()
        names_written = result.write(staging)
        written = [out_dir / name for name in names_written.values()]
        record = files.make_record("postprocess", src, result.record(), {},
                                   [table_path, *written])
        del record["parameters"], record["results"]
        record["steps"] = names
        record["n_output"] = int(len(result.table))
        record["chain"] = result.record()
        # The chain's record is postprocess.yaml; a Picasso table also carries it in its
        # sidecar.
        tables = files.write_output_table(staging / table_path.name, result.table, src, record,
                                          pixel_size_nm, write_csv_record=False)
        files.write_record(staging / record_path.name, record)
        target.commit({"steps": names, "chain": result.record()}, command)
    written = [out_dir / p.name for p in tables] + written + [record_path]
    return result, written
