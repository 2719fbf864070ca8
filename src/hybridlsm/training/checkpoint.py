"""Checkpoints without pickle: Equinox leaves (``.eqx``) plus a JSON metadata file.

Layout of a checkpoint directory::

    checkpoint.json       metadata: format, epoch, best val, history, rng key data, config hash,
                          the name of the current leaves file and its SHA-256 (written last: the
                          commit point), and the SHA-256 of the metadata itself (``meta_sha256``)
    checkpoint.prev.json  the previous good checkpoint's metadata (one epoch earlier)
    epoch_0006.eqx        its leaves
    epoch_0007.eqx        eqx.tree_serialise_leaves of {"model", "opt_state", "best_model"}

Every file is written atomically (``hybridlsm.rundir``). The leaves of a new epoch are written
first, then the JSON; leaves files that neither JSON names are removed last, so an interruption at
any moment leaves a consistent checkpoint. A checkpoint whose leaves do not match their recorded
SHA-256, or whose metadata does not match its own (a hand edit of ``"finished": true``, a damaged
epoch), is never loaded: ``read_checkpoint`` falls back to the previous one with a warning naming
the damaged file, and raises :class:`DamagedCheckpointError` when neither is good (``fit`` then
trains afresh).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import equinox as eqx

from hybridlsm.rundir import atomic_write, json_safe, problem

__all__ = ["CHECKPOINT_FORMAT", "META_FILE", "PREVIOUS_FILE", "CheckpointError", "DamagedCheckpointError",
           "read_checkpoint", "write_checkpoint"]  # fmt: skip

CHECKPOINT_FORMAT = "hybridlsm-checkpoint-2"
#: checkpoints written before the metadata carried its own checksum (2026-12-07): not read, since
#: nothing tells a hand edit of one (or a sealed checkpoint relabelled as one) from the original
_UNSEALED_FORMAT = "hybridlsm-checkpoint-1"
META_FILE = "checkpoint.json"
PREVIOUS_FILE = "checkpoint.prev.json"


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt or from an incompatible configuration."""


class DamagedCheckpointError(CheckpointError):
    """Neither the latest nor the previous checkpoint of a directory verifies (the message names
    the damaged files)."""


def _meta_digest(meta: dict[str, Any]) -> str:
    """SHA-256 of the metadata without its own ``meta_sha256``, over its canonical JSON (sorted
    keys: the digest does not depend on how the file was laid out)."""
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    # allow_nan: written metadata holds none (json_safe), but a hand-edited file may: then it does
    # not match, rather than failing to be digested
    return hashlib.sha256(json.dumps(body, sort_keys=True, allow_nan=True).encode()).hexdigest()


def _verify(meta_path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(metadata, None) when ``meta_path`` and the leaves file it names verify, else (None, why)."""
    try:
        meta = json.loads(meta_path.read_text())
        leaves = meta_path.parent / meta["leaves_file"]
        digest = meta.get("sha256", {}).get(leaves.name)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        return None, f"{meta_path} is unreadable ({err})"
    if meta.get("format") == _UNSEALED_FORMAT:
        return None, (f"{meta_path} has format {_UNSEALED_FORMAT!r}, written before checkpoints carried the "
                      "checksum of their metadata: it cannot be verified")
    if meta.get("format") != CHECKPOINT_FORMAT:
        return None, f"{meta_path} has format {meta.get('format')!r}, expected {CHECKPOINT_FORMAT!r}"
    if meta.get("meta_sha256") != _meta_digest(meta):
        return None, f"{meta_path} does not match its recorded checksum (edited or damaged)"
    if digest is None:
        return None, f"{meta_path} records no checksum of {leaves.name}"
    why = problem(leaves, digest)
    return (meta, None) if why is None else (None, f"{leaves} {why}")


def write_checkpoint(directory: Path, epoch: int, trees: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Write the leaves of ``trees`` and ``meta`` (JSON-able; non-finite floats become null); the
    checkpoint this one replaces becomes the previous one if it verifies."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    current, previous = directory / META_FILE, directory / PREVIOUS_FILE
    leaves_name = f"epoch_{epoch:04d}.eqx"
    # order: the new leaves, then checkpoint.json, then checkpoint.prev.json, then the cleanup, so
    # that a kill at any point leaves two distinct good checkpoints named (the old previous one is
    # removed only after the new previous one is written)
    old_meta, why = _verify(current) if current.is_file() else (None, "none")
    old_text = current.read_bytes() if why is None and old_meta.get("leaves_file") != leaves_name else None
    digest = atomic_write(directory / leaves_name, lambda p: eqx.tree_serialise_leaves(p, trees))
    meta = {"format": CHECKPOINT_FORMAT, **json_safe(meta), "leaves_file": leaves_name,
            "sha256": {leaves_name: digest}}  # fmt: skip
    meta["meta_sha256"] = _meta_digest(meta)
    text = json.dumps(meta, indent=1, allow_nan=False)
    atomic_write(current, lambda p: p.write_text(text))
    if old_text is not None:  # a damaged one never replaces a good previous
        atomic_write(previous, lambda p: p.write_bytes(old_text))
    keep = {leaves_name}
    if previous.is_file():
        try:
            keep.add(json.loads(previous.read_text())["leaves_file"])
        except (ValueError, KeyError, TypeError):
            pass
    for old in directory.glob("epoch_*.eqx"):
        if old.name not in keep:
            old.unlink()
    return current


def read_checkpoint(directory: Path, like: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """``(trees, meta)`` of the latest checkpoint in ``directory`` that verifies, or ``None`` when
    it holds no checkpoint (module docstring: fallback and :class:`DamagedCheckpointError`).

    ``like`` is a PyTree with the same structure as the saved ``trees`` (shapes and dtypes are
    taken from the file).
    """
    damaged = []
    for meta_path in (Path(directory) / META_FILE, Path(directory) / PREVIOUS_FILE):
        if not meta_path.is_file():
            continue
        meta, why = _verify(meta_path)
        if why is not None:
            damaged.append(why)
            continue
        leaves_path = meta_path.parent / meta["leaves_file"]
        try:
            with open(leaves_path, "rb") as f:
                trees = eqx.tree_deserialise_leaves(f, like)
        except Exception as err:  # the file verifies: shape/dtype mismatch
            raise CheckpointError(
                f"cannot read {leaves_path} into the current model (was it written by a different model "
                f"or filter spec?): {err}"
            ) from None
        if damaged:
            warnings.warn(f"damaged checkpoint: {'; '.join(damaged)}; continuing from the previous good one "
                          f"({leaves_path}, epoch {meta.get('epoch')})", stacklevel=2)  # fmt: skip
        return trees, meta
    if damaged:
        raise DamagedCheckpointError(f"no good checkpoint in {directory}: {'; '.join(damaged)}")
    return None
