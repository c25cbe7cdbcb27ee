"""Files: atomic writes (a file is complete or absent, never half-written) and content hashes."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename.

    On error the temporary file is removed and `path` is left as it was. The parent directory must
    exist (a missing one is the caller's error to report).
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output directory does not exist: {path.parent}")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# A temporary file of atomic_path not written to for this long belongs to a run that was stopped.
STALE_SECONDS = 60.0


def remove_stale_temporaries(path) -> int:
    """Remove the temporary files atomic_path left beside `path` when a run writing it was killed
    (.NAME.*.tmp not modified for STALE_SECONDS); returns how many were removed."""
    import time

    path = Path(path)
    if not path.parent.is_dir():
        return 0
    removed = 0
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(OSError):
            if tmp.is_file() and time.time() - tmp.stat().st_mtime >= STALE_SECONDS:
                tmp.unlink()
                removed += 1
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def sha256_file(path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def folder_problem(folder) -> str | None:
    """Why the folder `folder` could not be used or created for output, or None when it can.

    Writes nothing: the folder, or the nearest existing folder above it, must be a writable folder.
    """
    p = Path(folder)
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        return f"{p} is not a folder"
    if not os.access(p, os.W_OK | os.X_OK):
        return f"folder {p} is not writable"
    return None


@contextlib.contextmanager
def made_folders(*folders):
    """Create the missing `folders` (None entries are skipped) and the missing folders above them
    for the block. When the block raises, those it created that are still empty are removed again,
    so that a failed command leaves nothing behind."""
    created = []
    try:
        for folder in folders:
            if folder is None:
                continue
            missing = [p for p in (Path(folder), *Path(folder).parents) if not p.exists()]
            for p in reversed(missing):  # outermost first
                p.mkdir()
                created.append(p)
        yield
    except BaseException:
        for p in reversed(created):
            with contextlib.suppress(OSError):
                p.rmdir()
        raise
