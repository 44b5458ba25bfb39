"""Write outputs to a temporary file and rename, so a file is never half-written."""
from __future__ import annotations

import os
import stat
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    The temporary name keeps the suffix of ``path`` so writers that look at the
    extension behave the same. On an exception the temporary file is removed and
    ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        yield tmp
        give_usual_mode(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def usual_file_mode() -> int:
    """The mode a new file gets from ``open()``: ``0o666`` less the process umask.

    The umask is read from ``/proc/self/status`` where Linux gives it; elsewhere it is read
    by setting and restoring it (which is not thread-safe, hence the preference)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def give_usual_mode(path: str | Path, mode: int | None = None) -> None:
    """Give the regular file(s) at ``path`` (a file, or every file under a folder) the
    :func:`usual_file_mode`.

    Some writers (safetensors) create their file ``0o600`` like a private temporary file; an
    output must be readable as any other file the user writes. A file with other hard links
    is shared with another path (a resumed run's table) and is left as it is.
    """
    mode = usual_file_mode() if mode is None else mode
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        for dirpath, _, filenames in os.walk(path):
            for name in filenames:
                give_usual_mode(Path(dirpath) / name, mode)
        return
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISREG(info.st_mode) and info.st_nlink == 1 and stat.S_IMODE(info.st_mode) != mode:
        os.chmod(path, mode)


def write_text(path: str | Path, text: str) -> Path:
    """Atomically write a text file (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Atomically write a binary file."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def same_file(a: str | Path, b: str | Path) -> bool:
    """True when ``a`` and ``b`` name the same existing file (used to refuse overwriting inputs)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        pass
    try:
        return Path(a).resolve() == Path(b).resolve()
    except (RuntimeError, OSError):  # a symlink loop (RuntimeError before Python 3.13)
        from stormfold.errors import UserError

        bad = next((str(p) for p in (a, b) if not _resolves(p)), str(a))
        raise UserError(f"{bad}: the path goes through a symbolic link loop") from None


def _resolves(path: str | Path) -> bool:
    try:
        Path(path).resolve()
    except (RuntimeError, OSError):
        return False
    return True
