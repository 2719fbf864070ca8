"""Files of a run directory that can be trusted: atomic writes, SHA-256 checksums, the run lock.

- ``atomic_write``: a file is written to ``<name>.tmp`` beside it, flushed to disk (fsync) and
  renamed into place (``os.replace``), so a reader finds the old file or the new one, never part of
  one.
- Its SHA-256 is recorded where the file is described: ``checkpoint.json`` and ``model.json`` map
  the names of their data files to digests (``"sha256": {name: hex}``); any other file (the
  netCDF predictions and observations) gets the sidecar ``<file>.sha256`` in ``sha256sum`` format
  (``sha256sum -c`` checks it). ``problem(path)`` says why a file cannot be trusted, or None.
- ``run_lock(run_dir)`` (or ``hold_run_lock``/``release_run_lock``): an OS lock (``fcntl.flock``) on
  ``<parent>/.<name>.lock``, beside the run directory because an overwriting run writes to a
  sibling folder and renames it at the end. The kernel drops the lock when its process ends, so a
  lock file left by a killed process does not block; the file only says who holds the lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no lock
    fcntl = None

__all__ = ["RunLockedError", "atomic_write", "checksum_path", "hold_run_lock", "lock_path", "problem",
           "release_run_lock", "run_lock", "sha256_of", "write_checked"]  # fmt: skip


def json_safe(x):
    """``x`` with NumPy scalars and arrays as Python values, recursively, and non-finite floats as
    None, so ``json.dumps(..., allow_nan=False)`` writes valid JSON."""
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, np.ndarray):
        return json_safe(x.tolist())
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system syncs a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], object]) -> str:
    """``write(tmp)`` a temporary file beside ``path``, fsync it and rename it to ``path``;
    returns the file's SHA-256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        digest = sha256_of(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return digest


def checksum_path(path: Path) -> Path:
    return Path(path).with_name(Path(path).name + ".sha256")


def write_checked(path: Path, write: Callable[[Path], object]) -> str:
    """``atomic_write`` plus the sidecar ``<file>.sha256`` (written after the file: a file without a
    matching sidecar is never trusted)."""
    digest = atomic_write(path, write)
    atomic_write(checksum_path(path), lambda p: p.write_text(f"{digest}  {Path(path).name}\n"))
    return digest


def problem(path: Path, sha256: str | None = None) -> str | None:
    """Why ``path`` cannot be trusted (missing, no checksum, checksum mismatch), or None when its
    SHA-256 is ``sha256`` (default: the one in its sidecar)."""
    path = Path(path)
    if not path.is_file():
        return "is missing"
    if sha256 is None:
        side = checksum_path(path)
        try:
            sha256 = side.read_text().split()[0]
        except (OSError, IndexError):
            return f"has no checksum ({side.name} is missing or empty)"
    if sha256_of(path) != sha256:
        return "is damaged or truncated: its SHA-256 checksum does not match the recorded one"
    return None


#: the hidden siblings a run writes to until it has finished: a new run, and a run replacing an old
#: one; and where ``finish_run_dir`` puts the old one while it swaps the new one in
PARTIAL, OVERWRITE, REPLACED = "partial", "overwrite", "replaced"


def unfinished_dir(run_dir: Path, kind: str = PARTIAL) -> Path:
    """The hidden sibling ``.<name>.<kind>`` of ``run_dir``: where a run writes until it has finished
    (``PARTIAL``, ``OVERWRITE``), or the old folder during ``finish_run_dir`` (``REPLACED``)."""
    return Path(run_dir).with_name(f".{Path(run_dir).name}.{kind}")


def unfinished_run(run_dir: Path) -> str | None:
    """Why ``run_dir`` is not a finished run to report on, validate or discover from (it is an
    ``unfinished_dir``), or None."""
    name = Path(run_dir).name
    for kind in (PARTIAL, OVERWRITE):
        if name.startswith(".") and name.endswith(f".{kind}") and len(name) > len(kind) + 2:
            return (f"{run_dir} is an unfinished run (it stopped before its report was written); finish it with "
                    f"`hybridlsm run CONFIG --resume{' --overwrite' if kind == OVERWRITE else ''}`")
    return None


def finish_run_dir(work: Path, run_dir: Path) -> None:
    """Put a finished run (or a finished ``RUN/discovery``) in its place: rename the folder it wrote
    to, replacing an old one (or an empty folder) only now. Stopped between its two renames, the
    old one is left as ``.<name>.replaced`` beside it."""
    if work == run_dir:
        return
    if not run_dir.exists():
        work.rename(run_dir)
        return
    old = unfinished_dir(run_dir, REPLACED)
    if old.exists():
        shutil.rmtree(old)
    run_dir.rename(old)
    work.rename(run_dir)
    shutil.rmtree(old)


def restore_replaced(run_dir: Path) -> None:
    """Take back the old folder that ``finish_run_dir`` left beside ``run_dir`` when it was stopped
    between its two renames (nothing in ``run_dir``'s place)."""
    old = unfinished_dir(run_dir, REPLACED)
    if old.is_dir() and not Path(run_dir).exists():
        old.rename(run_dir)


class DamagedRunFile(ValueError):
    """A file of a run whose content does not match its recorded SHA-256, or cannot be read."""


def verified(path: Path) -> Path:
    """``path``, after checking it against its sidecar checksum where it has one (a file written
    before checksums, or by hand, has none and is taken as it is); DamagedRunFile otherwise."""
    path = Path(path)
    if checksum_path(path).is_file():
        why = problem(path)
        if why is not None:
            raise DamagedRunFile(f"{path} {why}")
    return path


def read_json_object(path: Path) -> dict:
    """The JSON object in the run file ``path``; DamagedRunFile naming it when it does not read as
    JSON or holds another kind of value (a list, a number)."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise DamagedRunFile(f"{path} cannot be read as JSON ({type(err).__name__}: {err})") from None
    if not isinstance(value, dict):
        raise DamagedRunFile(f"{path} holds a JSON {type(value).__name__}, not the object this file holds")
    return value


def load_checked_dataset(path: Path):
    """The netCDF file ``path`` of a run, loaded after ``verified``; a file that does not read as
    netCDF is a DamagedRunFile too (never a traceback from the backend)."""
    import xarray as xr

    try:
        return xr.load_dataset(verified(path))
    except DamagedRunFile:
        raise
    except (ValueError, OSError, RuntimeError) as err:
        raise DamagedRunFile(f"{path} cannot be read as netCDF ({type(err).__name__}: {err})") from None


# ------------------------------------------------------------------------------------ lock


class RunLockedError(FileExistsError):
    """Another process holds the lock of the run directory (the message names it)."""


_held: dict[Path, int] = {}  # lock file -> descriptor, for the locks this process holds


def lock_path(run_dir: Path) -> Path:
    # resolved: a run reached through a link, or by another relative path, has one lock
    run_dir = Path(run_dir).resolve()
    return run_dir.with_name(f".{run_dir.name}.lock")


def _holder(fd: int) -> str:
    try:
        h = json.loads(os.pread(fd, 4096, 0))
        return f"process {h['pid']} on {h['host']} (started {h['started']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"  # it has not written its name yet


def hold_run_lock(run_dir: Path) -> Path:
    """Lock ``run_dir`` for this process until ``release_run_lock`` or the process ends; a lock
    this process holds already is kept. RunLockedError names the process holding it."""
    path = lock_path(run_dir)
    if path in _held or fcntl is None:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise RunLockedError(f"run directory {Path(run_dir)} is in use by {holder}; wait for it to "
                                 f"finish or stop it (lock {path})") from None  # fmt: skip
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        os.close(fd)  # the holder removed this file as it released the lock: lock the new one
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(me).encode(), 0)
    _held[path] = fd
    return path


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[Path]:
    """Hold the lock of ``run_dir`` while the block runs (kept if this process held it before)."""
    acquired = lock_path(run_dir) not in _held
    path = hold_run_lock(run_dir)
    try:
        yield path
    finally:
        if acquired:
            release_run_lock(run_dir)


def release_run_lock(run_dir: Path) -> None:
    """Release the lock ``hold_run_lock`` took (the lock file is removed while still locked)."""
    fd = _held.pop(lock_path(run_dir), None)
    if fd is not None:
        lock_path(run_dir).unlink(missing_ok=True)
        os.close(fd)
