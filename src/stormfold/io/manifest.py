"""``manifest.json``: what marks an output folder complete, and how to check it.

The manifest is written last by :meth:`stormfold.io.outputs.OutputFolder.commit`, after every
file of the set is in place, and removed before the first file of a new set replaces an old
one. It lists every file (relative path, size in bytes, SHA-256), the command, the
parameters' fingerprint and the version. A folder without it is incomplete — an interrupted
or failed run — whatever else it holds; readers and ``--resume`` trust only the manifest
(:func:`read_manifest`, :func:`verify_manifest`, :func:`is_complete`).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Optional

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
#: Hidden folders of output sets being written (never part of a set).
STAGING_PREFIX = ".stormfold-staging."
#: Hidden record of the names of a set being moved in (or changed in place) while the
#: folder has no manifest: they are stormfold's, not the user's (:func:`written_by`).
PENDING = ".stormfold-pending.json"


def shown_path(path: Path | str) -> Path:
    """``path`` as the user will find it: a file written in an output folder's staging
    folder (:data:`STAGING_PREFIX`) is named where it is moved in (messages name it so)."""
    path = Path(path)
    return Path(*[p for p in path.parts if not p.startswith(STAGING_PREFIX)])


def sha256_file(path: Path, sync: bool = False) -> str:
    """SHA-256 of a file (hex); with ``sync``, also flushed to the disk (before a manifest
    says the file is there)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
        if sync:
            os.fsync(fh.fileno())
    return digest.hexdigest()


def inventory(root: Path) -> list[dict]:
    """Every file under ``root`` (relative POSIX path, bytes, SHA-256), sorted."""
    files = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel.split("/")[-1].startswith(STAGING_PREFIX):
            continue
        files.append({"path": rel, "bytes": path.stat().st_size, "sha256": sha256_file(path, sync=True)})
    return files


def fingerprint(parameters: Any) -> str:
    """SHA-256 (16 hex digits) of the parameters as sorted JSON."""
    text = json.dumps(parameters, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def is_member_path(path: object) -> bool:
    """True for a path a manifest may list: relative, POSIX, inside the folder.

    A manifest is read back to find the stale files of an earlier set (which are removed)
    and the files to check, so a doctored one must not reach outside its folder: no
    absolute path, drive, ``..``, ``.``, empty component or backslash.
    """
    if not isinstance(path, str) or not path or "\\" in path or "\0" in path:
        return False
    parts = path.split("/")
    # Longer names than the file system takes (255 bytes a name, 4096 a path) cannot be
    # files of the folder, and asking for them fails with ENAMETOOLONG.
    return not path.startswith("/") and ":" not in parts[0] and \
        len(path.encode("utf-8", "surrogatepass")) <= 4096 and \
        all(part not in ("", ".", "..") and len(part.encode("utf-8", "surrogatepass")) <= 255
            for part in parts)


def _is_entry(entry: object) -> bool:
    return (isinstance(entry, dict) and is_member_path(entry.get("path"))
            and type(entry.get("bytes")) is int and entry["bytes"] >= 0
            and isinstance(entry.get("sha256"), str))


def read_manifest(folder: Path | str) -> Optional[dict]:
    """The manifest of a complete output folder, or None (absent, unreadable, or listing a
    file outside the folder: then the folder counts as incomplete and nothing it lists is
    trusted)."""
    path = Path(folder) / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("files"), list) or \
            not all(_is_entry(f) for f in data["files"]):
        return None
    return data


def verify_manifest(folder: Path | str, checksums: bool = True) -> list[str]:
    """What disagrees between a folder and its manifest (empty: complete and intact).

    Parameters
    ----------
    folder : path
        An output folder.
    checksums : bool
        Also compare SHA-256 (else sizes only).

    Returns
    -------
    list of str
        One line per problem: no manifest, a file missing, of another size or content.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        return [f"{folder}: no {MANIFEST} (incomplete or not a stormfold output)"]
    problems = []
    for entry in manifest["files"]:
        path = folder / entry["path"]
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.stat().st_size != entry["bytes"]:
            problems.append(f"{path}: {path.stat().st_size} bytes, the manifest says "
                            f"{entry['bytes']}")
        elif checksums and sha256_file(path) != entry["sha256"]:
            problems.append(f"{path}: content differs from the manifest")
    return problems


def is_complete(folder: Path | str, checksums: bool = False) -> bool:
    """True when ``folder`` has a manifest and its files agree with it."""
    return not verify_manifest(folder, checksums)


def written_by(folder: Path | str, command: str) -> set[str]:
    """Top-level names in ``folder`` that a stormfold ``command`` wrote: listed in its
    manifest or, while a new set of that command was being moved in, in :data:`PENDING`.

    Read leniently (a manifest that :func:`read_manifest` does not trust still says which
    command wrote which file): the answer only decides what may be *replaced* by the same
    command, never what is removed.
    """
    names: set[str] = set()
    for record in (MANIFEST, PENDING):
        try:
            data = json.loads((Path(folder) / record).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict) or data.get("command") != command:
            continue
        entries = data.get("files") if record == MANIFEST else data.get("names")
        for entry in entries if isinstance(entries, list) else []:
            path = entry.get("path") if isinstance(entry, dict) else entry
            if is_member_path(path):
                names.add(path.split("/")[0])
    return names


def pending_names(folder: Path | str, command: str) -> set[str]:
    """Top-level names :data:`PENDING` records for ``command``: the sets of a commit that a
    crash cut short (the old set's files among them are stale once a new set is in)."""
    try:
        data = json.loads((Path(folder) / PENDING).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    if not isinstance(data, dict) or data.get("command") != command:
        return set()
    names = data.get("names")
    return {n.split("/")[0] for n in names if is_member_path(n)} if isinstance(names, list) \
        else set()


def previous_names(folder: Path | str, command: str) -> set[str]:
    """Top-level names of ``command``'s previous set in ``folder``: its trusted manifest's,
    and those a commit cut short left in :data:`PENDING` (stale once a new set is in)."""
    old = read_manifest(folder) or {}
    names = pending_names(folder, command)
    if old.get("command") == command:
        names |= {f["path"].split("/")[0] for f in old["files"]}
    return names


def foreign_names(folder: Path | str, command: str, names: Iterable[str]) -> list[str]:
    """Those of ``names`` (top-level) present in ``folder`` that no stormfold ``command``
    wrote (:func:`written_by`), and a manifest.json that is not stormfold's."""
    folder = Path(folder)
    mine = written_by(folder, command)
    foreign = sorted({n for n in names if n not in mine
                      and ((folder / n).exists() or (folder / n).is_symlink())})
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        data = {"stormfold_manifest": None}
    except (OSError, ValueError):
        data = None
    if not isinstance(data, dict) or "stormfold_manifest" not in data:
        foreign.append(MANIFEST)
    return foreign


def mark_incomplete(folder: Path | str, command: Optional[str] = None,
                    names: tuple[str, ...] = ()) -> None:
    """Remove ``folder``'s manifest before a file of it is changed in place (a training's
    history) or replaced (a commit): from then on the folder is incomplete until a new
    manifest is written.

    What the old manifest listed, and ``names`` (the new set's), are first recorded in
    :data:`PENDING`, so that the next run of the same command recognises these files as
    its own (:func:`written_by`) and does not take them for the user's.
    """
    folder = Path(folder)
    old = read_manifest(folder) or {}
    command = command or old.get("command")
    if command is None:
        return
    mine = written_by(folder, command) | {n.split("/")[0] for n in names}
    if mine:
        from stormfold.io.atomic import write_text

        write_text(folder / PENDING, json.dumps({"command": command,
                                                 "names": sorted(mine)}) + "\n")
    if (folder / MANIFEST).exists():
        (folder / MANIFEST).unlink()
    fsync_dir(folder)


def clear_pending(folder: Path | str) -> None:
    """Remove :data:`PENDING` once a new manifest lists the set."""
    (Path(folder) / PENDING).unlink(missing_ok=True)


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link ``source`` to ``target`` (copy where links are not possible); folders are
    copied file by file the same way."""
    source, target = Path(source), Path(target)
    if source.is_dir():
        shutil.copytree(source, target, copy_function=_link_file,
                        ignore=shutil.ignore_patterns(STAGING_PREFIX + "*"))
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    _link_file(source, target)


def _link_file(source: str | Path, target: str | Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (renames) to the disk, where the system allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def rewrite_paths(folder: Path | str, replacements: list[tuple[str, str]], names: tuple[str, ...],
                  parameters_fingerprint: Optional[str] = None) -> None:
    """Replace paths in the text files ``names`` of a complete output set and update its
    manifest (sizes, checksums and, if given, the parameters' fingerprint).

    A set built inside another set's staging folder (the demo's runs) records its inputs
    and itself where they were staged; once the outer set is about to be moved in, its
    records must name the final places, or ``run.yaml`` would not run again.

    Parameters
    ----------
    folder : path
        A complete output folder (with ``manifest.json``).
    replacements : list of (str, str)
        (old, new) text pairs, applied in order.
    names : tuple of str
        Files of the set to rewrite (relative paths); absent ones are skipped.
    parameters_fingerprint : str, optional
        The fingerprint of the parameters as they read after the rewrite.
    """
    from stormfold.io.atomic import write_text

    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        raise ValueError(f"{folder}: not a complete output set")
    entries = {f["path"]: f for f in manifest["files"]}
    for name in names:
        path = folder / name
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        for old, new in replacements:
            text = text.replace(old, new)
        write_text(path, text)
        if name in entries:
            entries[name].update(bytes=path.stat().st_size, sha256=sha256_file(path, sync=True))
    if parameters_fingerprint is not None:
        manifest["fingerprint"] = parameters_fingerprint
    write_text(folder / MANIFEST, json.dumps(manifest, indent=1) + "\n")
