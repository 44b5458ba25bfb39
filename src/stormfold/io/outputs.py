"""Output sets written as one transaction: nothing or everything, never a mix.

A command that writes several files (a folder such as ``stormfold run``'s, or a table with
its record and side files such as ``stormfold drift``'s ``OUT.csv``, ``OUT.yaml``,
``OUT_drift.csv``) goes through an :class:`OutputFolder` or :class:`OutputFiles`:

1. **Check** before any work (:meth:`~OutputSet.check`): the destination can be a folder,
   no output would replace an input or be written into an input folder, no input lies in
   an output sub-folder that the set replaces, and the disk has room for the expected
   bytes.
2. **Stage**: the command writes into a hidden staging folder
   (``.stormfold-staging.<pid>.<tag>``; inside the output folder, or next to the output
   files) — :meth:`~OutputSet.path` gives where each file goes.
3. **Commit** (:meth:`~OutputSet.commit`): the old completeness marker is removed first
   (the old ``manifest.json``, or the old record of a file set), then each staged entry is
   renamed into place (same file system: each rename is atomic), files of the old set that
   the new one lacks are removed, and the marker is written last. For a folder the marker
   is ``manifest.json``: every file with its size and SHA-256, the parameters' fingerprint,
   the command and the version (:func:`read_manifest`, :func:`verify_manifest`).
4. **Abort** on any error, Ctrl-C or SIGTERM (:meth:`~OutputSet.abort`, run by the context
   manager): the staging folder is removed, and so is every folder the set created when it
   is left empty. The old set, if any, is untouched.

A process killed with SIGKILL leaves a staging folder that the next command writing there
removes (its process is gone); it can never leave a manifest that disagrees with the files,
because a manifest is only written after every file is in place, and removed before the
first one is replaced.

Files that are not outputs (inputs among them, a resumable run's state) are never touched.
Errors of the environment — permission denied, disk full, read-only file system — become a
:class:`~stormfold.errors.UserError` naming the user's path (not a hidden temporary one)
and the cause (:func:`environment_error`).
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from stormfold import __version__
from stormfold.errors import UserError
from stormfold.io.atomic import give_usual_mode
from stormfold.io.manifest import (MANIFEST, MANIFEST_FORMAT, STAGING_PREFIX, clear_pending,
                                   fingerprint, foreign_names, fsync_dir, inventory, is_member_path,
                                   mark_incomplete, previous_names, read_manifest, sha256_file)


#: errno values that are the environment's doing, not the program's.
ENVIRONMENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.EROFS,
                      errno.EFBIG, errno.EMFILE, errno.ENFILE, errno.ENAMETOOLONG, errno.ELOOP,
                      errno.ENOTDIR, errno.EISDIR, errno.EIO}
_CAUSES = {errno.ENOSPC: "no space left on the disk", errno.EDQUOT: "disk quota exceeded",
           errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
           errno.EROFS: "read-only file system", errno.EFBIG: "file too large",
           errno.EIO: "input/output error of the device",
           errno.ENOTDIR: "a part of the path is a file, not a folder",
           errno.EISDIR: "it is a folder",
           errno.ENOENT: "the folder does not exist or does not take new files"}
# Temporary names of the writers (io.atomic, ThunderstormCsvWriter) → the file they become.
_TEMPORARY = re.compile(r"^\.(?P<stem>.+?)\.(?:[0-9a-f]{8}\.tmp|partial)(?P<suffix>\.[^.]*)?$")


# --------------------------------------------------------------------------- helpers
def environment_error(exc: OSError, path: Optional[Path | str] = None,
                      action: str = "write") -> UserError:
    """One-line :class:`UserError` for an OSError of the environment.

    Parameters
    ----------
    exc : OSError
        The error (its ``errno`` gives the cause).
    path : path, optional
        The user's path to name (default: the file of ``exc``).
    action : str
        ``"write"`` or ``"read"``.
    """
    cause = _CAUSES.get(exc.errno) or (exc.strerror or str(exc)).lower()
    where = path if path is not None else (exc.filename or "?")
    return UserError(f"cannot {action} {where}: {cause}")


def is_environment_error(exc: BaseException) -> bool:
    """True for an OSError whose errno is the environment's (permissions, space, ...)."""
    return isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS


def _is_output_environment_error(exc: BaseException) -> bool:
    """As :func:`is_environment_error`, and ENOENT: while outputs are written every folder
    was made or checked first, so a missing one is the file system's doing (a folder such
    as /proc that takes no new files, or one removed meanwhile), not the program's."""
    return is_environment_error(exc) or (isinstance(exc, OSError) and exc.errno == errno.ENOENT)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_staging(folder: Path) -> None:
    """Remove staging folders in ``folder`` left by processes that no longer run."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return
    for entry in entries:
        if not entry.name.startswith(STAGING_PREFIX) or not entry.is_dir():
            continue
        try:
            pid = int(entry.name[len(STAGING_PREFIX):].split(".")[0])
        except ValueError:
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            shutil.rmtree(entry, ignore_errors=True)


def _existing_ancestor(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def format_bytes(n: float) -> str:
    """``1.5 GB`` style (decimal units, as disk sizes are quoted)."""
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n:.1f} TB"  # pragma: no cover - loop returns


def check_free_space(destination: Path | str, expected_bytes: float, what: str) -> None:
    """Refuse to start when the disk of ``destination`` has less free space than the
    expected outputs need (with a 5 % and 1 MB margin).

    Raises
    ------
    UserError
        Naming the destination, the space needed and the space free.
    """
    if expected_bytes <= 0:
        return
    try:
        free = shutil.disk_usage(_existing_ancestor(Path(destination))).free
    except OSError:
        return
    needed = 1.05 * expected_bytes + 1e6
    if free < needed:
        raise UserError(f"not enough free disk space for {what} {destination}: about "
                        f"{format_bytes(needed)} needed, {format_bytes(free)} free")


def _inside(path: Path, folder: Path) -> bool:
    try:
        Path(os.path.realpath(path)).relative_to(os.path.realpath(folder))
        return True
    except ValueError:
        return False


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_inputs_apart(outputs: Iterable[Path], inputs: Iterable[Path | str | None],
                       replaced_dirs: Iterable[Path] = ()) -> None:
    """Refuse outputs that would replace an input or be written into an input folder, and
    inputs inside an output folder that the set replaces as a whole.

    Parameters
    ----------
    outputs : paths
        The final paths of the output files (and folders).
    inputs : paths
        Files and folders read by the command (None entries are skipped).
    replaced_dirs : paths
        Output sub-folders that a commit replaces as a whole (their content is lost).
    """
    inputs = [Path(p) for p in inputs if p is not None and str(p) and Path(p).exists()]
    for out in outputs:
        out = Path(out)
        for src in inputs:
            if _same(out, src):
                kind = "folder" if src.is_dir() else "file"
                raise UserError(f"the output {out} would overwrite the input {kind} {src}: "
                                f"choose another output folder or name")
            if src.is_dir() and _same(out.parent, src):
                raise UserError(f"the output {out} would be written into the input folder "
                                f"{src}: choose another output folder")
    for folder in replaced_dirs:
        for src in inputs:
            if Path(folder).exists() and _inside(src, folder):
                raise UserError(f"the input {src} lies in the output folder {folder}, which "
                                f"is replaced: move it or choose another output folder")


@contextmanager
def deferred_signals() -> Iterator[None]:
    """SIGINT and SIGTERM received in the block are acted on when it is left: the few
    renames that replace one set by another are not cut in the middle by them. (Python
    handlers, not a signal mask: another thread of the process could take a masked signal.)"""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread runs signal handlers
        return
    pending: list[int] = []

    def remember(signum, frame):
        pending.append(signum)

    previous = {s: signal.signal(s, remember) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for s in pending[:1]:
            handler = previous[s]
            if callable(handler):
                handler(s, None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(s)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- output sets
class OutputSet:
    """Common part of :class:`OutputFolder` and :class:`OutputFiles` (see the module notes).

    Use as a context manager around the work that writes: ``with out: ...; out.commit()``.
    Leaving the block without a commit (an exception, Ctrl-C, SIGTERM) aborts.
    """

    def __init__(self, home: Path, inputs: Iterable[Path | str | None] = (),
                 expected_bytes: float = 0.0, what: str = "the outputs"):
        self.home = Path(home)
        self.inputs = [Path(p) for p in inputs if p is not None and str(p)]
        self.expected_bytes = float(expected_bytes)
        self.what = what
        self.staging: Optional[Path] = None
        self.committed = False
        self._created: list[Path] = []

    # ------------------------------------------------------------------ to override
    def final_paths(self) -> list[Path]:
        """The final paths of the outputs (for the checks)."""
        return []

    def _user_path(self) -> Path:
        return self.home

    # ------------------------------------------------------------------ checks
    def check(self) -> "OutputSet":
        """Everything that can be checked before any work; returns self."""
        for parent in [self.home, *self.home.parents]:
            if parent.exists():
                if not parent.is_dir():
                    where = "" if parent == self.home else f" (in the path of {self.home})"
                    raise UserError(f"{parent} exists and is not a folder{where}")
                break
        check_inputs_apart(self.final_paths(), self.inputs, self._replaced_dirs())
        check_free_space(self.home, self.expected_bytes, self.what)
        return self

    def _replaced_dirs(self) -> list[Path]:
        return []

    # ------------------------------------------------------------------ staging
    def open(self) -> Path:
        """Create the destination folder (if needed) and the staging folder; returns it."""
        if self.staging is not None:
            return self.staging
        self.check()
        missing = []
        for parent in [self.home, *self.home.parents]:
            if parent.exists():
                break
            missing.append(parent)
        try:
            for folder in reversed(missing):
                folder.mkdir()
                self._created.append(folder)
            remove_stale_staging(self.home)
            staging = self.home / f"{STAGING_PREFIX}{os.getpid()}.{uuid.uuid4().hex[:6]}"
            staging.mkdir()
        except OSError as exc:
            self._remove_created()
            if _is_output_environment_error(exc):
                raise environment_error(exc, self._user_path()) from None
            raise
        self.staging = staging
        return staging

    def path(self, name: str | Path) -> Path:
        """Where to write the output ``name`` (relative to the destination) while staging."""
        staging = self.open()
        return staging / Path(name)

    def __enter__(self) -> "OutputSet":
        self.open()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            if not self.committed:
                self.abort()
            return
        where = self._translate(getattr(exc, "filename", None))  # before staging goes
        staging = self.staging
        self.abort()
        if _is_output_environment_error(exc):
            raise environment_error(exc, where) from None
        if isinstance(exc, UserError) and staging is not None and str(staging) in str(exc):
            # A writer's message names the file it was given, the staged one: name the
            # user's instead (staging/NAME becomes home/NAME; str(home / "x") minus "x" is
            # the user's prefix, empty when home is the current folder ".").
            message = str(exc).replace(f"{staging}{os.sep}", str(self.home / "x")[:-1])
            raise UserError(message.replace(str(staging), str(self.home))) from None

    def _translate(self, filename: Any) -> Path:
        """The user's path for a file named in an error (never the staging name)."""
        if filename is None or self.staging is None:
            return self._user_path()
        try:
            rel = Path(os.path.abspath(filename)).relative_to(os.path.abspath(self.staging))
        except ValueError:
            return Path(filename)
        if not rel.parts:
            return self._user_path()
        match = _TEMPORARY.match(rel.name)
        if match:
            rel = rel.with_name(match["stem"] + (match["suffix"] or ""))
        return self.home / rel

    def abort(self) -> None:
        """Remove the staging folder and the folders this set created, if empty."""
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None
        self._remove_created()

    def _remove_created(self) -> None:
        for folder in reversed(self._created):
            try:
                folder.rmdir()
            except OSError:
                break
        self._created = []

    def _move(self, source: Path, target: Path) -> None:
        give_usual_mode(source)
        if source.is_dir():
            if target.exists() or target.is_symlink():
                _remove(target)
            os.rename(source, target)
        else:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            if target.is_file() and _same(source, target):
                # Hard links of one file (a resumed run's table): rename would do nothing
                # and leave the staged link behind.
                source.unlink()
                return
            os.replace(source, target)

    def _protected(self, path: Path) -> bool:
        return any(_same(path, src) or _inside(src, path) for src in self.inputs if src.exists())


class OutputFolder(OutputSet):
    """An output folder written as a whole, completed by ``manifest.json``.

    Parameters
    ----------
    folder : path
        The output folder (created when needed; it may hold other files, which stay).
    command : str
        The command, recorded in the manifest (``"run"``, ``"localize"``, ...).
    names : iterable of str
        The files (and sub-folders) the set will hold, relative to ``folder``, for the
        checks before any work; what is actually staged is what the manifest lists.
    inputs : iterable of paths
        What the command reads (never replaced, never removed).
    expected_bytes : float
        Disk space the outputs need (checked before any work).
    subfolders : iterable of str
        Entries of ``names`` that are folders (replaced as a whole by a commit).
    """

    def __init__(self, folder: Path | str, command: str, names: Iterable[str] = (),
                 inputs: Iterable[Path | str | None] = (), expected_bytes: float = 0.0,
                 subfolders: Iterable[str] = ()):
        super().__init__(Path(folder), inputs, expected_bytes, f"the {command} outputs in")
        self.command = command
        self.names = [str(n) for n in names]
        self.subfolders = [str(n) for n in subfolders]

    def final_paths(self) -> list[Path]:
        return [self.home / n for n in [*self.names, MANIFEST]]

    def _replaced_dirs(self) -> list[Path]:
        return [self.home / n for n in self.subfolders]

    def check(self) -> "OutputFolder":
        """As :meth:`OutputSet.check`; refuse another command's complete outputs (they would
        be unlisted, some removed as stale) and files this command did not write (the user's)."""
        super().check()
        old = read_manifest(self.home)
        if old is not None and old.get("command") != self.command:
            raise UserError(f"{self.home} holds the complete outputs of another command "
                            f"({old.get('command')}, listed in its {MANIFEST}): choose "
                            f"another output folder, e.g. a sub-folder")
        self._refuse_foreign(n.split("/")[0] for n in [*self.names, *self.subfolders])
        return self

    def _refuse_foreign(self, names: Iterable[str]) -> None:
        """No manifest of this command lists such a file: the user's own, never replaced."""
        foreign = foreign_names(self.home, self.command, names)
        if foreign:
            raise UserError(f"{self.home} holds file(s) that stormfold {self.command} would "
                            f"replace and did not write: {', '.join(foreign)}; choose "
                            f"another output folder (--out) or remove them")

    def commit(self, parameters: Any = None, command_line: Optional[list[str]] = None,
               adopt: Iterable[str] = ()) -> dict:
        """Move the staged set into the folder and write ``manifest.json`` last.

        Parameters
        ----------
        parameters : any JSON-able, optional
            The parameters of the run; their fingerprint goes into the manifest.
        command_line : list of str, optional
            Recorded in the manifest.
        adopt : iterable of str
            Files already in the folder (written in place, e.g. a training history) that
            belong to the set: listed in the manifest, never removed as stale.

        Returns
        -------
        dict
            The manifest.
        """
        staging = self.open()
        try:
            return self._commit(staging, parameters, command_line, list(adopt))
        except OSError as exc:
            if _is_output_environment_error(exc):
                raise environment_error(exc, self._translate(exc.filename)) from None
            raise

    def _commit(self, staging: Path, parameters: Any, command_line: Optional[list[str]],
                adopt: list[str]) -> dict:
        # Also here: the names given before the work need not list every staged file.
        self._refuse_foreign(p.name for p in staging.iterdir())
        files = inventory(staging)
        for name in adopt:  # already in place
            path = self.home / name
            files.append({"path": Path(name).as_posix(), "bytes": path.stat().st_size,
                          "sha256": sha256_file(path, sync=True)})
        entries = sorted(staging.iterdir(), key=lambda p: (p.is_dir(), p.name))
        new_names = {p.name for p in entries} | {Path(a).parts[0] for a in adopt}
        previous = previous_names(self.home, self.command)  # stale unless in the new set
        manifest = {
            "stormfold_manifest": MANIFEST_FORMAT,
            "complete": True,
            "command": self.command,
            "command_line": command_line,
            "stormfold_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "fingerprint": None if parameters is None else fingerprint(parameters),
            "files": sorted(files, key=lambda f: f["path"]),
        }
        from stormfold.io.atomic import write_text

        marker = self.home / MANIFEST
        with deferred_signals():  # Ctrl-C or SIGTERM now would leave a mix of two sets
            # Incomplete from here; PENDING lets the next run tell both sets from the user's.
            mark_incomplete(self.home, self.command, tuple(new_names))
            for entry in entries:
                target = self.home / entry.name
                if self._protected(target):  # refused by check(); never replace an input
                    raise UserError(f"the output {target} would replace an input")
                self._move(entry, target)
            for name in sorted(previous - new_names):
                stale = self.home / name
                if not is_member_path(name) or stale.parent != self.home:
                    continue  # read_manifest refuses such lists; never leave the folder
                try:
                    if (stale.exists() or stale.is_symlink()) and not self._protected(stale):
                        _remove(stale)
                except OSError:
                    continue  # a leftover that cannot go must not stop the new manifest
            fsync_dir(self.home)
            write_text(marker, json.dumps(manifest, indent=1) + "\n")
            clear_pending(self.home)
            fsync_dir(self.home)
            staging.rmdir()
            self.staging = None
            self.committed = True
            self._created = []
        return manifest


class OutputFiles(OutputSet):
    """A set of files in one folder (a table, its record and side files), moved in together.

    The last path is the set's record (e.g. ``OUT.yaml``): the old one is removed before
    the first file is replaced and the new one is moved in last, so a record always
    describes the files next to it.

    Parameters
    ----------
    paths : list of paths
        The final files, all in one folder, the record last.
    inputs : iterable of paths
        What the command reads (never replaced).
    expected_bytes : float
        Disk space the outputs need.
    """

    def __init__(self, paths: Iterable[Path | str], inputs: Iterable[Path | str | None] = (),
                 expected_bytes: float = 0.0):
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise ValueError("OutputFiles needs at least one path")
        parents = {os.path.abspath(p.parent) for p in self.paths}
        if len(parents) != 1:
            raise ValueError(f"OutputFiles: the files must share one folder, got {parents}")
        super().__init__(self.paths[0].parent, inputs, expected_bytes, "the outputs")
        for path in self.paths:
            if path.is_dir() and not path.is_symlink():
                raise UserError(f"the output {path} is a folder")

    def final_paths(self) -> list[Path]:
        return list(self.paths)

    def check(self) -> "OutputFiles":
        """As :meth:`OutputSet.check`, and refuse to replace a file that a complete output
        folder lists in its manifest (the folder would no longer match it)."""
        super().check()
        listed = {entry.get("path") for entry in (read_manifest(self.home) or {}).get("files", [])}
        for path in self.paths:
            if path.name in listed:
                raise UserError(f"{path} belongs to the complete outputs in {self.home} (listed "
                                f"in its {MANIFEST}): choose another output name")
        return self

    def _user_path(self) -> Path:
        return self.paths[0]

    def path(self, name: str | Path) -> Path:
        """Where to write the output file ``name`` (its final path or its file name)."""
        return self.open() / Path(name).name

    def commit(self) -> list[Path]:
        """Move the staged files into place, the record last; returns the final paths of
        the files written."""
        staging = self.open()
        try:
            staged = [p for p in self.paths if (staging / p.name).exists()]
            record = self.paths[-1]
            with deferred_signals():  # Ctrl-C or SIGTERM now would leave a mix of two sets
                if record in staged:
                    record.unlink(missing_ok=True)
                for path in staged:
                    if self._protected(path):
                        raise UserError(f"the output {path} would replace an input")
                    self._move(staging / path.name, path)
                staging.rmdir()
                self.staging = None
                self.committed = True
                self._created = []
        except OSError as exc:
            if _is_output_environment_error(exc):
                raise environment_error(exc, self._translate(exc.filename)) from None
            raise
        return staged
