"""Checkpoints without pickle: Equinox leaves (``.eqx``) plus a JSON metadata file.

Layout of a checkpoint directory::

    checkpoint.json       metadata: format, epoch, best val, history, rng key data, config hash,
                          and the name of the current leaves file (written last: the commit point)
    epoch_0007.eqx        eqx.tree_serialise_leaves of {"model", "opt_state", "best_model"}

The leaves file of a new epoch is written first, then the JSON is replaced atomically, then older
leaves files are removed, so an interruption at any moment leaves a consistent checkpoint.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import equinox as eqx

__all__ = ["CHECKPOINT_FORMAT", "META_FILE", "CheckpointError", "read_checkpoint", "write_checkpoint"]

CHECKPOINT_FORMAT = "hybridlsm-checkpoint-1"
META_FILE = "checkpoint.json"


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt or from an incompatible configuration."""


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _atomic_write_bytes(path: Path, write: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_checkpoint(directory: Path, epoch: int, trees: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Write the leaves of ``trees`` and ``meta`` (JSON-able; non-finite floats become null)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    leaves_name = f"epoch_{epoch:04d}.eqx"
    _atomic_write_bytes(directory / leaves_name, lambda f: eqx.tree_serialise_leaves(f, trees))
    meta = {"format": CHECKPOINT_FORMAT, **_json_safe(meta), "leaves_file": leaves_name}
    text = json.dumps(meta, indent=1, allow_nan=False).encode()
    _atomic_write_bytes(directory / META_FILE, lambda f: f.write(text))
    for old in directory.glob("epoch_*.eqx"):
        if old.name != leaves_name:
            old.unlink()
    return directory / META_FILE


def read_checkpoint(directory: Path, like: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """``(trees, meta)`` from ``directory``, or ``None`` when it holds no checkpoint.

    ``like`` is a PyTree with the same structure as the saved ``trees`` (shapes and dtypes are
    taken from the file).
    """
    meta_path = Path(directory) / META_FILE
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"corrupt checkpoint metadata {meta_path}: {err}") from None
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{meta_path}: format {meta.get('format')!r}, expected {CHECKPOINT_FORMAT!r}")
    leaves_path = Path(directory) / meta["leaves_file"]
    if not leaves_path.is_file():
        raise CheckpointError(f"{meta_path} names {leaves_path.name}, which does not exist")
    try:
        with open(leaves_path, "rb") as f:
            trees = eqx.tree_deserialise_leaves(f, like)
    except Exception as err:  # shape/dtype mismatch, truncated file
        raise CheckpointError(
            f"cannot read {leaves_path} into the current model (was it written by a different model "
            f"or filter spec?): {err}"
        ) from None
    return trees, meta
