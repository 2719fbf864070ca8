"""Baselines and ablations of the regional hybrid (issue 15 item 7) that ``models.regional`` lacks.

- :class:`ClassConstants`: a parameteriser without a network: one learned K_h and one r_s per
  land-cover class (the ``no_parameteriser`` ablation); the same call as the spatiotemporal
  network, ``net(variables, static, key=None) -> (2, T, ny, nx)`` (K_h, then r_s), inside the same
  bounds, trained with the same loss and two phases by ``models.regional.train_regional``;
- :func:`with_parameteriser`: the regional hybrid of ``build_hybrid`` with another parameteriser
  (the one place that assembles a ``RegionalHybrid`` here);
- the column hybrid applied per cell: a registered column hybrid (``hybrid_param``) trained through
  the registry on the tower cells' observed Qh and Qle and run on every cell as an independent
  column under the forcing's air (no spatial context): :func:`column_domains`,
  :func:`train_column_hybrid`, :func:`predict_column_hybrid`.

MC dropout of the regional models: ``models.regional.mc_dropout_regional``.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from ..config import TrainConfig
from ..data.schema import IGBP_BY_INDEX
from ..domain import Domain, SiteLayout, domain_from_grid
from ..neural import BoundedHead
from ..neural import PARAMETER_BOUNDS
from ..neural._spatiotemporal import PARAMETER_PRIOR
from .regional import LAD_CLASS_OF, RegionData, build_hybrid, network_fields
from .registry import TrainingContext, get_model, validate_options

__all__ = [
    "ClassConstants", "build_class_constants", "with_parameteriser", "COLUMN_HYBRID", "COLUMN_OPTIONS",
    "COLUMN_SPINUP_DAYS", "COLUMN_WINDOW_DAYS", "LAD_CLASS_OF",
    "column_domains", "train_column_hybrid", "predict_column_hybrid",
]

#: the registered column hybrid of the ``column_hybrid`` baseline and its options: the network sets
#: the multipliers of r_a (K_h) and r_s per column and step from the forcing, the column's states,
#: the stability inputs (log u, bulk Ri) and the land-cover class; LaD's class defaults (no
#: calibration: the towers cover three of the five classes)
COLUMN_HYBRID = "hybrid_param"
COLUMN_OPTIONS = {"stability_inputs": True, "static_inputs": ["igbp"], "physics_init": "default", "calibrate": [],
                  "targets": ["Qh", "Qle"]}
#: the column hybrid's training windows [days]: the regional models' 12-hour warm-up and 48-hour windows
COLUMN_SPINUP_DAYS, COLUMN_WINDOW_DAYS = 0.5, 2.0


class ClassConstants(eqx.Module):
    """K_h and r_s constant in time, one pair per land-cover class: ``raw`` (C, 2) through the
    log-space bounded head of the network's ranges (K_h [1e-3, 1e2], r_s [1e2, 1e4]). A cell's
    field is the class values' geometric mean weighted by its class fractions
    ``static[:n_classes]`` (one-hot: the class's value). ``names``: the two fields, as the
    hybrid's network names them (``("Kh_scale", "rs")`` for a hybrid whose K_h is a multiplier
    of the physics' own)."""

    raw: jax.Array
    head: BoundedHead
    n_classes: int = eqx.field(static=True)
    names: tuple[str, str] = eqx.field(static=True)

    def __init__(self, n_classes: int, dtype=jnp.float32, prior: dict | None = None,
                 names: tuple[str, str] = ("Kh", "rs")):
        prior = PARAMETER_PRIOR if prior is None else prior
        self.names = names
        self.head = BoundedHead([PARAMETER_BOUNDS[n][0] for n in names], [PARAMETER_BOUNDS[n][1] for n in names],
                                log_space=True, dtype=dtype)
        start = self.head.inverse(jnp.asarray([prior[n] for n in names], dtype))
        self.raw = jnp.broadcast_to(start, (n_classes, 2)).astype(dtype)
        self.n_classes = n_classes

    def __call__(self, variables, static, key=None) -> jax.Array:
        """(2, T, ny, nx): K_h then r_s on every step of ``variables`` (V, T, ny, nx)."""
        del key  # nothing random
        dtype = self.raw.dtype
        fractions = jnp.asarray(static[: self.n_classes], dtype)  # (C, ny, nx)
        log_values = jnp.log(self.head(self.raw))  # (C, 2)
        fields = jnp.exp(jnp.einsum("cp,cyx->pyx", log_values, fractions))
        t = variables.shape[1]
        return jnp.broadcast_to(fields[:, None], (2, t, *fields.shape[1:]))

    def values(self) -> dict[str, np.ndarray]:
        """The learned constants, by ``names``: e.g. {"Kh": (C,), "rs": (C,)}."""
        v = np.asarray(self.head(self.raw))
        return {n: v[:, i] for i, n in enumerate(self.names)}


def with_parameteriser(data: RegionData, net: eqx.Module, seed: int = 0, **hybrid):
    """``build_hybrid(data, **hybrid)`` with ``net`` as its parameteriser (same co-trained law and
    physics).

    The regional hybrid is assembled by ``build_hybrid`` and only its ``net`` is swapped, so this
    helper is the one place to change if ``RegionalHybrid`` stops having a ``net`` field."""
    return eqx.tree_at(lambda m: m.net, build_hybrid(data, seed=seed, **hybrid), net)


def build_class_constants(data: RegionData, seed: int = 0, exchange: str = "field", **hybrid):
    """The ``no_parameteriser`` ablation of the hybrid ``build_hybrid(data, exchange=exchange,
    **hybrid)``: that hybrid with :class:`ClassConstants` of the fields its network gives."""
    net = ClassConstants(len(data.classes), dtype=data.variables.dtype, names=network_fields(exchange))
    return with_parameteriser(data, net, seed=seed, exchange=exchange, **hybrid)


# ------------------------------------------------------------------------------------------
# the column hybrid, cell by cell
# ------------------------------------------------------------------------------------------


def column_domains(ds: xr.Dataset, split: dict[str, np.ndarray]) -> tuple[Domain, Domain, Domain]:
    """(every cell, the tower cells with the training steps as loss mask, the tower cells with the
    validation steps) from a virtual region. The truth (``*_true``) and the surface-temperature
    product are left out: the column hybrid sees the forcing (and the albedo product where the region
    has one) and trains on the towers' Qh and Qle."""
    keep = [v for v in ds.data_vars if not v.endswith("_true") and v != "AvgSurfT"
            and ds[v].dims == ("time", "y", "x")]
    codes = np.asarray(ds["land_cover"].values)
    lad = np.vectorize(lambda c: IGBP_BY_INDEX.index(LAD_CLASS_OF.get(IGBP_BY_INDEX[c - 1], IGBP_BY_INDEX[c - 1])) + 1)
    land_cover = xr.DataArray(lad(codes).astype(np.int16), dims=("y", "x"))
    # the per-cell static fields the columns take (an albedo product: the columns run it, as the regional models do)
    grid = ds[keep].assign_coords({k: ds[k] for k in ("elevation", "Albedo") if k in ds})
    full = domain_from_grid(grid, land_cover=land_cover, name="virtual_region")
    if full.n_columns != ds.sizes["y"] * ds.sizes["x"]:
        raise ValueError(f"column_domains: {full.n_columns} complete cells of {ds.sizes['y'] * ds.sizes['x']}")
    towers = np.flatnonzero(np.asarray(ds["tower"].values).reshape(-1))
    ids = tuple(full.column_ids[i] for i in towers)
    tower = Domain(full.data.isel(column=towers), full.static.isel(column=towers), SiteLayout(ids), "towers")
    return full, tower.with_loss_mask(split["train"]), tower.with_loss_mask(split["val"])


def train_column_hybrid(train: Domain, val: Domain, cfg: TrainConfig, options: dict | None = None,
                        spinup_days: float = COLUMN_SPINUP_DAYS, window_days: float = COLUMN_WINDOW_DAYS,
                        progress: bool = True):
    """The registry's column hybrid (:data:`COLUMN_HYBRID`, :data:`COLUMN_OPTIONS` updated by
    ``options``) trained on ``train``, early-stopped on ``val``; returns (model, options)."""
    spec = get_model(COLUMN_HYBRID)
    opts = validate_options(COLUMN_HYBRID, {**COLUMN_OPTIONS, "lr": cfg.lr, **(options or {})})
    ctx = TrainingContext(max_qc=1, spinup_days=spinup_days, window_days=window_days, training=cfg,
                          shared_parameters=True, progress=progress)
    return spec.train(spec.build(opts), opts, [train], [val], ctx), opts


def predict_column_hybrid(model, domain: Domain) -> dict[str, np.ndarray]:
    """The column hybrid over every cell of ``domain`` ((T, N) outputs in the grid's C order, as
    ``predict_regional``'s); ``rs_field`` is the column's r_s output."""
    out = {k: np.asarray(v) for k, v in get_model(COLUMN_HYBRID).predict(model, domain).items()}
    if "rs" in out:
        out["rs_field"] = out["rs"]
    return out


# ------------------------------------------------------------------------------------------
# MC dropout
# ------------------------------------------------------------------------------------------


