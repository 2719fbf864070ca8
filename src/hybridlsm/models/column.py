"""Shared machinery of every model that runs the LaD column: calibrated physics, fixed-K_h physics
and the hybrids (``models/physics.py``, ``models/hybrid.py``).

A :class:`ColumnModel` holds the land model (whose closure may contain networks), the unconstrained
offsets of the calibrated parameters, and optionally a sequence network that produces time-varying
parameters (dynamic parameterisation). Training is truncated back-propagation through time over
windows:

- the record of every training site is spun up and rolled out with the model as it stands at the
  start of each of a few rounds; its states at the window starts initialise the windows (the
  window's first ``spinup_days`` adapt them to the model being trained and carry no loss);
- windows of ``spinup_days + window_days`` from all training sites form one batch axis (the model's
  site axis N), so one jit-compiled rollout trains on all of them at once;
- the loss sees only the steps the dataset's ``loss_mask`` (the split) and QC allow;
- with several training sites every site has the same say in the loss (``site_weights``): it is
  the mean over sites of each site's MSE divided by that site's variance, not the MSE pooled over
  all steps, in which the longest record and the site with the largest fluxes would dominate;
- validation rolls out each validation record continuously from the model's spun-up state, as
  prediction does.

``fit="record"`` trains on whole records instead (the calibrated physics' default): one batch holds
every training site's full record, rolled out continuously from the model's own spun-up state and
preceded by one *differentiated* spin-up cycle, so parameters that act through months of storage
(the root-zone capacity W_max through the soil water carried from the wet season into the dry one)
get the gradient of that memory, which windows of a few weeks cannot see.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from .. import thermo
from ..constants import T_FREEZE
from ..data import qc_mask
from ..data.schema import site_label
from ..physics import (
    Forcing,
    LaDModel,
    LaDState,
    default_params,
    forcing_from_datasets,
    from_unconstrained,
    rollout,
    spin_up,
    to_unconstrained,
)
from ..training.losses import DiscoveryLaw, discovery_loss, energy_residual_loss, sparsity_l1, total_loss
from ..training.trainer import fit

#: ALMA outputs written to the predictions files (SoilTemp keeps its layer axis).
PREDICTION_OUTPUTS = (
    "Qh", "Qle", "Qg", "Rnet", "Evap", "Qs", "Qsb", "SoilTemp", "SoilMoist", "SWE", "GWS",
    "AvgSurfT", "SR", "Kh", "ra", "rs", "RiB", "Qf",
)  # fmt: skip
STATE_OUTPUTS = ("SoilTemp", "SoilMoist", "SWE", "GWS")
SITE_INDEX = "site_index"  # key of the column's site in the parameters of a per-site calibrated model
SPINUP_MAX_DAYS = 365.0


# ------------------------------------------------------------------------------------ model


class ColumnModel(eqx.Module):
    """A LaD column with calibrated parameter offsets and optional dynamic parameters.

    Attributes:
        land: the land model (``LaDModel`` or a wrapper with the same three calls)
        deltas: unconstrained offsets of the calibrated parameters (value =
            from_unconstrained(to_unconstrained(default) + delta)): scalars shared by all sites, or
            one per site of ``sites`` (per-site calibration; the parameters then carry each
            column's index into ``sites`` under ``SITE_INDEX``)
        dynamic_net: optional network ``forcing features (T, N, F) -> raw (T, N, P)``
        dynamic_head: bounded head mapping the raw outputs to multipliers
        dynamic_names: parameters the multipliers scale, step by step
        law: optional discovery law K_h = a u^b |Ri|^c trained jointly (phase 2)
        chunk: steps per checkpointed chunk of the rollout
    """

    land: eqx.Module
    deltas: dict
    dynamic_net: eqx.Module | None = None
    dynamic_head: eqx.Module | None = None
    dynamic_names: tuple[str, ...] = eqx.field(static=True, default=())
    law: DiscoveryLaw | None = None
    chunk: int = eqx.field(static=True, default=96)
    delta_gain: float = eqx.field(static=True, default=1.0)  # Adam step on the offsets = gain x lr
    sites: tuple[str, ...] = eqx.field(static=True, default=())  # per-site offsets: their sites

    def site_params(self, base: dict) -> dict:
        """Parameters of each site: defaults with the calibrated offsets applied."""
        out = {k: v for k, v in base.items() if k != SITE_INDEX}
        for name, delta in self.deltas.items():
            if self.sites:
                delta = delta[base[SITE_INDEX]]
            out[name] = from_unconstrained(name, to_unconstrained(name, base[name]) + self.delta_gain * delta)
        return out

    def with_site_index(self, base: dict, site: str) -> dict:
        """``base`` with this model's index of ``site`` (per-site offsets; otherwise unchanged)."""
        if not self.sites:
            return base
        if site not in self.sites:
            raise ValueError(f"this model was calibrated per site for {list(self.sites)}; it has no "
                             f"parameters for site {site!r} (use shared parameters to predict unseen sites)")
        return {**base, SITE_INDEX: np.full(np.shape(base["albedo"]), self.sites.index(site), np.int32)}

    def per_site(self, sites: Sequence[str]) -> ColumnModel:
        """A copy whose offsets are one per site (all starting from the shared values)."""
        sites = tuple(sites)
        deltas = {k: jnp.broadcast_to(v, (len(sites),)) + 0 for k, v in self.deltas.items()}
        return replace(self, deltas=deltas, sites=sites)

    def dynamic(self, forcing: Forcing, params: dict, key=None) -> dict | None:
        """Time-varying parameters ``{name: (T, N)}`` from the sequence network, or None."""
        if self.dynamic_net is None:
            return None
        feats = forcing_features(forcing)
        raw = self.dynamic_net(feats, key=key)
        mult = self.dynamic_head(raw)
        return {name: params[name][None, :] * mult[..., i] for i, name in enumerate(self.dynamic_names)}

    def run(self, forcing: Forcing, base: dict, state0, key=None):
        params = self.site_params(base)
        dyn = self.dynamic(forcing, params, key)
        return rollout(self.land, params, forcing, state0, dyn, self.chunk)


# ------------------------------------------------------------------------------- features

#: Fixed physical scales of the network inputs (robust to sites and splits; no data statistics).
def forcing_features(f: Forcing) -> jax.Array:
    """(…, 8) scaled forcing features: SW, LW, Tair, humidity deficit, wind, precipitation, hour."""
    q_deficit = thermo.saturation_specific_humidity(f.t_air, f.p_surf) - f.q_air
    return jnp.stack(
        [
            f.sw_down / 500.0,
            (f.lw_down - 300.0) / 50.0,
            (f.t_air - T_FREEZE - 15.0) / 10.0,
            q_deficit / 0.01,
            f.wind / 4.0 - 1.0,
            jnp.log1p(f.precip * 3600.0),
            (f.p_surf - 90000.0) / 10000.0,
        ],
        axis=-1,
    )


def state_features(state: LaDState, forcing: Forcing, params: dict) -> jax.Array:
    """(N, 8) scaled state features: soil temperatures relative to the air, relative soil water,
    snow and groundwater (the model's internal states)."""
    dtemp = (state.soil_temp - forcing.t_air[..., None]) / 10.0
    rel_water = state.soil_water / params["root_zone_capacity"]
    return jnp.concatenate(
        [
            dtemp,
            (rel_water - 0.5)[..., None] * 2.0,
            jnp.log1p(state.snow)[..., None],
            jnp.log1p(state.groundwater)[..., None] / 3.0,
        ],
        axis=-1,
    )


N_FORCING_FEATURES = 7
N_STATE_FEATURES = 8


# ------------------------------------------------------------------------------- site data


_site = site_label


def site_base_params(ds: xr.Dataset, overrides: dict | None = None) -> dict:
    """Default parameters (N = 1) from the site's IGBP class and heights."""
    return default_params(
        [ds.attrs.get("igbp", "GRA")],
        canopy_height=ds.attrs.get("canopy_height"),
        measurement_height=ds.attrs.get("measurement_height"),
        overrides=overrides,
    )


def target_arrays(ds: xr.Dataset, targets: Sequence[str], max_qc: int) -> tuple[np.ndarray, np.ndarray]:
    """(T, K) observations and their usable mask (QC <= max_qc, finite, and ``loss_mask``)."""
    n = ds.sizes["time"]
    extra = np.asarray(ds["loss_mask"].values, bool) if "loss_mask" in ds else np.ones(n, bool)
    obs, mask = [], []
    for t in targets:
        if t not in ds:
            obs.append(np.full(n, np.nan))
            mask.append(np.zeros(n, bool))
            continue
        v = np.asarray(ds[t].values, dtype=np.float64)
        obs.append(v)
        mask.append(np.asarray(qc_mask(ds, t, max_qc), bool) & np.isfinite(v) & extra)
    return np.stack(obs, -1), np.stack(mask, -1)


def _optional(ds: xr.Dataset, name: str) -> np.ndarray:
    return np.asarray(ds[name].values, dtype=np.float64) if name in ds else np.full(ds.sizes["time"], np.nan)


@dataclass
class SiteRecord:
    """One site prepared for the column models (NumPy/JAX arrays, N = 1)."""

    site: str
    forcing: Forcing
    base: dict
    state0: Any
    obs: np.ndarray  # (T, K)
    mask: np.ndarray  # (T, K)
    rnet: np.ndarray  # (T,)
    qg: np.ndarray  # (T,)
    split_mask: np.ndarray | None = None  # (T,) the dataset's loss_mask (steps of its split)
    default_out: dict | None = None  # states (and fluxes) over the record (T, ...), default physics at first


_SPINUP_CACHE: dict[tuple, Any] = {}


def _spun_up_state(land, base: dict, forcing: Forcing, key: tuple):
    """Spin the default land model up on the first year (at most) of the record; cached per site."""
    if key not in _SPINUP_CACHE:
        state, _ = spin_up(land, base, forcing, period=spinup_period(forcing), max_cycles=5, tol_temp=0.05, tol_water=0.5)
        _SPINUP_CACHE[key] = state
    return _SPINUP_CACHE[key]


def prepare_site(ds: xr.Dataset, targets: Sequence[str], max_qc: int, param_overrides: dict | None = None,
                 trajectory: bool = False) -> SiteRecord:
    """Forcing, default parameters, a spun-up initial state and targets of one dataset."""
    dtype = jnp.zeros(0).dtype
    forcing = forcing_from_datasets([ds], dtype=dtype)
    base = {k: jnp.asarray(v, dtype=dtype) for k, v in site_base_params(ds, param_overrides).items()}
    land = LaDModel()
    key = (_site(ds), str(ds["time"].values[0]), ds.sizes["time"], str(dtype),
           tuple(sorted((param_overrides or {}).items())))  # fmt: skip
    state0 = _spun_up_state(land, base, forcing, key)
    obs, mask = target_arrays(ds, targets, max_qc)
    split = np.asarray(ds["loss_mask"].values, bool) if "loss_mask" in ds else np.ones(ds.sizes["time"], bool)
    rec = SiteRecord(_site(ds), forcing, base, state0, obs, mask, _optional(ds, "Rnet"), _optional(ds, "Qg"), split)
    if trajectory:
        _, out = _rollout_jit(land, base, forcing, state0)
        rec.default_out = {k: np.asarray(out[k]) for k in STATE_OUTPUTS + ("Qh", "Qle", "Qg", "Rnet")}
    return rec


@eqx.filter_jit
def _rollout_jit(land, params, forcing, state0):
    return rollout(land, params, forcing, state0)


def _state_at(rec: SiteRecord, index: int) -> LaDState:
    """The default-physics state at the start of step ``index`` (N = 1), as NumPy arrays."""
    if index == 0:
        return jax.tree_util.tree_map(np.asarray, rec.state0)
    s = rec.default_out
    return LaDState(
        soil_temp=s["SoilTemp"][index - 1],
        soil_water=s["SoilMoist"][index - 1],
        snow=s["SWE"][index - 1],
        groundwater=s["GWS"][index - 1],
    )


def soil_heat_storage_of(state: LaDState, params: dict, dz=None):
    """S_R [J m-2] of a state (the diagnostic ``observe`` reports as ``SR``)."""
    from ..physics.soil import LAYER_THICKNESS, layer_heat_capacity, soil_heat_storage

    return soil_heat_storage(state.soil_temp, layer_heat_capacity(params["soil_heat_capacity"], dz or LAYER_THICKNESS))


# -------------------------------------------------------------------------------- windows
# Windows and batches are assembled in NumPy: eager jax.numpy ops would each compile once per
# shape, which costs more than the training steps themselves on a small CPU.


def _concat_trees(trees: Sequence[Any], axis: int):
    return jax.tree_util.tree_map(lambda *a: np.concatenate([np.asarray(x) for x in a], axis=axis), *trees)


def make_windows(records: Sequence[SiteRecord], spin: int, length: int,
                 weights: Sequence[np.ndarray] | None = None) -> dict:
    """All training windows of all sites stacked on the site axis: forcing (L, W), state0 (W, …),
    base (W,), obs/mask (L, W, K), rnet/qg (L, W), weight (W, K) (each window's record's
    ``weights`` entry, default 1). Windows without a usable target are skipped."""
    total = spin + length
    parts = []
    weights = _default_weights(records, weights)
    for rec, weight in zip(records, weights):
        n = rec.forcing.n_steps
        for start in range(0, max(n - total, 0) + 1, length):
            stop = start + total
            if stop > n:
                break
            m = rec.mask[start:stop].copy()
            m[:spin] = False
            if m.any():
                parts.append((rec, start, stop, m, weight))
    if not parts:
        raise ValueError("no training window with a usable target value (check QC, split and window length)")
    forcing = _concat_trees([jax.tree_util.tree_map(lambda a, s=s, e=e: np.asarray(a)[s:e], r.forcing)
                             for r, s, e, *_ in parts], axis=1)  # fmt: skip
    return {
        "forcing": forcing,
        "state0": _concat_trees([_state_at(r, s) for r, s, *_ in parts], axis=0),
        "base": _concat_trees([r.base for r, *_ in parts], axis=0),
        "obs": np.stack([r.obs[s:e] for r, s, e, *_ in parts], axis=1),
        "mask": np.stack([p[3] for p in parts], axis=1),
        "rnet": np.stack([r.rnet[s:e] for r, s, e, *_ in parts], axis=1),
        "qg": np.stack([r.qg[s:e] for r, s, e, *_ in parts], axis=1),
        "weight": np.stack([p[4] for p in parts], axis=0),
    }


def _default_weights(records: Sequence[SiteRecord], weights) -> list[np.ndarray]:
    if weights is None:
        return [np.ones(rec.obs.shape[-1]) for rec in records]
    if len(weights) != len(records):
        raise ValueError(f"{len(weights)} weights for {len(records)} records")
    return [np.asarray(w, float) for w in weights]


def batches_of(windows: dict, batch_size: int) -> Callable:
    """``key -> list of batches``: windows shuffled and cut into fixed-size batches (the last batch
    is topped up with repeated windows whose loss mask is cleared, so shapes never change)."""
    n = windows["obs"].shape[1]
    size = min(batch_size, n)
    dtype = jnp.zeros(0).dtype

    def as_jax(tree):
        return jax.tree_util.tree_map(
            lambda a: jnp.asarray(a, dtype=dtype) if np.issubdtype(np.asarray(a).dtype, np.floating) else jnp.asarray(a),
            tree,
        )

    def select(idx, valid):
        b = {
            "forcing": jax.tree_util.tree_map(lambda a: a[:, idx], windows["forcing"]),
            "state0": jax.tree_util.tree_map(lambda a: a[idx], windows["state0"]),
            "base": {k: v[idx] for k, v in windows["base"].items()},
        }
        for k in ("obs", "rnet", "qg"):
            b[k] = windows[k][:, idx]
        b["weight"] = windows["weight"][idx]
        b["mask"] = windows["mask"][:, idx] & valid[None, :, None]
        return as_jax(b)

    def make(key):
        order = np.asarray(jax.random.permutation(key, n))
        out = []
        for i in range(0, n, size):
            idx = order[i : i + size]
            valid = np.ones(size, bool)
            if idx.size < size:
                valid[idx.size :] = False
                idx = np.concatenate([idx, order[: size - idx.size]])
            out.append(select(idx, valid))
        return out

    return make


# ---------------------------------------------------------------------------------- losses


def normalised_mse(sim, obs, mask, scale, weight=None):
    """Mean over targets of the masked MSE divided by each target's variance scale; ``weight``
    (W, K) weighs each window's squared errors (``site_weights``)."""
    err = jnp.where(mask, (sim - jnp.where(mask, obs, 0.0)) / scale, 0.0)
    sq = err * err if weight is None else err * err * weight[None]
    per_target = jnp.sum(sq, axis=(0, 1)) / jnp.maximum(jnp.sum(mask, axis=(0, 1)), 1)
    return jnp.mean(per_target)


def make_loss(targets: Sequence[str], scale: np.ndarray, sparsity_fn: Callable | None = None):
    """The loss of the column models: normalised MSE (+ phase-2 energy residual, sparsity and
    discovery terms, weighted by the trainer's schedule)."""
    scale = jnp.asarray(scale)

    def loss_fn(model: ColumnModel, batch: dict, key, weights: dict):
        _, out = model.run(batch["forcing"], batch["base"], batch["state0"], key)
        sim = jnp.stack([out[t] for t in targets], axis=-1)
        mse = normalised_mse(sim, batch["obs"], batch["mask"], scale, batch.get("weight"))
        loss_mask = jnp.any(batch["mask"], axis=-1)
        terms = {
            "energy": energy_residual_loss(out["Qh"], out["Qle"], batch["rnet"], batch["qg"], loss_mask),
        }
        if sparsity_fn is not None:
            terms["sparsity"] = sparsity_fn(model, out)
        if model.law is not None:
            terms["discovery"] = discovery_loss(model.law, out["Kh"], batch["forcing"].wind, out["RiB"], loss_mask)
        return total_loss(mse, terms, weights)

    return loss_fn


def delta_sparsity(model: ColumnModel, out: dict):
    """L1 on the calibrated offsets (calibration should move few parameters)."""
    if not model.deltas:
        return jnp.zeros(())
    return sparsity_l1(model.deltas)


# ---------------------------------------------------------------------------- train/predict


@eqx.filter_jit
def _run_jit(model: ColumnModel, forcing, base, state0):
    return model.run(forcing, base, state0)


def validation_fn(model_records: Sequence[SiteRecord], targets: Sequence[str], scale: np.ndarray,
                  weights: Sequence[np.ndarray] | None = None):
    """The training loss's data term on whole validation records (``weights`` as in training)."""
    scale = np.asarray(scale)
    weights = _default_weights(model_records, weights)

    def val_fn(model: ColumnModel) -> float:
        sse, n = 0.0, 0
        for rec, weight in zip(model_records, weights):
            _, out = _run_jit(model, rec.forcing, rec.base, rec.state0)
            sim = np.stack([np.asarray(out[t])[:, 0] for t in targets], -1)
            m = rec.mask
            if not m.any():
                continue
            err = np.where(m, (sim - np.where(m, rec.obs, 0.0)) / scale, 0.0)
            sse += float(np.sum(err**2 * weight))
            n += int(m.sum())
        return sse / n if n else float("nan")

    return val_fn


def target_scale(records: Sequence[SiteRecord]) -> np.ndarray:
    """Standard deviation of each target over the usable training values (>= 10 W m-2)."""
    obs = np.concatenate([np.where(r.mask, r.obs, np.nan) for r in records])
    return np.maximum(np.nanstd(obs, axis=0), 10.0)


def site_weights(records: Sequence[SiteRecord], scale: np.ndarray,
                 site_scale: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
    """(K,) weights per record that give every site the same say in the loss.

    With weight v_s = N / (S n_s) * scale^2 / sigma_s^2 on the squared errors of site s (S sites,
    n_s usable values of a target at site s, N = sum n_s, sigma_s the site's ``target_scale``), the
    loss sum(v err^2 / scale^2) / N is the mean over sites of each site's MSE / sigma_s^2. One site:
    all weights are 1 (the loss is unchanged). ``site_scale`` (default: from ``records``) lets the
    validation records use the training sites' sigma_s.
    """
    sites = sorted({rec.site for rec in records})
    if len(sites) <= 1:
        return [np.ones(len(scale)) for _ in records]
    by_site = {s: [rec for rec in records if rec.site == s] for s in sites}
    site_scale = dict(site_scale or {})
    for s in set(sites) - set(site_scale):
        site_scale[s] = target_scale(by_site[s])
    counts = {s: sum(rec.mask.sum(axis=0) for rec in recs) for s, recs in by_site.items()}
    total = sum(counts.values())
    scale = np.asarray(scale, float)
    weight = {}
    for s in sites:  # a site without values of a target (sigma_s NaN) gets weight 0 for it
        sigma = np.where(np.isfinite(site_scale[s]), site_scale[s], scale)
        weight[s] = np.where(counts[s] > 0, total / (len(sites) * np.maximum(counts[s], 1)) * (scale / sigma) ** 2, 0.0)
    return [weight[rec.site] for rec in records]


def loss_weights(train_recs: Sequence[SiteRecord], val_recs: Sequence[SiteRecord], scale: np.ndarray,
                 mode: str = "balanced") -> tuple[list[np.ndarray] | None, list[np.ndarray] | None]:
    """Weights of the training and validation records for ``TrainConfig.site_weighting``:
    ``site_weights`` (validation with the training sites' sigma_s) or None (pooled)."""
    if mode == "pooled":
        return None, None
    if mode != "balanced":
        raise ValueError(f"site_weighting must be 'balanced' or 'pooled', not {mode!r}")
    sites = {rec.site for rec in train_recs}
    site_scale = {s: target_scale([r for r in train_recs if r.site == s]) for s in sites}
    return site_weights(train_recs, scale, site_scale), site_weights(val_recs, scale, site_scale)


def train_column_model(
    model: ColumnModel,
    train_data: Sequence[xr.Dataset],
    val_data: Sequence[xr.Dataset],
    cfg,
    ckpt_dir: Path | None,
    *,
    targets: Sequence[str],
    train_cfg,
    sparsity_fn: Callable | None = None,
    filter_spec=None,
    progress: bool = True,
    validity_fn=None,
    target_override: Callable[[SiteRecord], SiteRecord] | None = None,
    state_rounds: int = 3,
    fit_mode: str = "windows",
) -> ColumnModel:
    """Fit a column model by truncated BPTT over windows (``fit_mode="windows"``) or over whole
    records (``"record"``: one gradient step per epoch, see the module docstring); early stopping on
    the validation records."""
    if fit_mode not in ("windows", "record"):
        raise ValueError(f"fit_mode must be 'windows' or 'record', not {fit_mode!r}")
    max_qc = cfg.data.max_qc
    train_recs = [model_record(model, prepare_site(ds, targets, max_qc)) for ds in train_data]
    if target_override is not None:
        train_recs = [target_override(r) for r in train_recs]
    val_recs = [model_record(model, prepare_site(ds, targets, max_qc)) for ds in val_data]
    dt = train_recs[0].forcing.time_step_s
    spin = int(round(cfg.data.spinup_days * 86400.0 / dt))
    length = int(round(cfg.data.window_days * 86400.0 / dt))
    scale = target_scale(train_recs)
    train_weights, val_weights = loss_weights(train_recs, val_recs, scale, train_cfg.site_weighting)
    loss_fn = make_loss(targets, scale, sparsity_fn)
    # Rounds: each round restarts training and validation from the state the current model spins
    # up to, and takes the window initial states from its own continuous trajectory, so the slow
    # stores (soil water, groundwater) the loss sees match what the model produces when it runs
    # continuously (as in prediction).
    rounds = 1 if train_cfg.two_phase.enabled else max(1, min(state_rounds, train_cfg.epochs))
    per_round = -(-train_cfg.epochs // rounds)
    best, best_val = None, float("inf")
    for r in range(rounds):
        val_fn = validation_fn([replace(rec, state0=model_spun_up_state(model, rec.forcing, rec.base))
                                for rec in val_recs], targets, scale, val_weights)  # fmt: skip
        if fit_mode == "record":
            windows = record_windows(model, train_recs, train_weights)
            batch_size = len(train_recs)
        else:
            train_recs = [_with_model_trajectory(model, rec) for rec in train_recs]
            windows = make_windows(train_recs, spin, length, train_weights)
            batch_size = train_cfg.batch_windows
        result = fit(
            model,
            loss_fn,
            batches_of(windows, batch_size),
            val_fn,
            train_cfg.model_copy(update={"epochs": per_round}) if rounds > 1 else train_cfg,
            checkpoint_dir=None if ckpt_dir is None else (Path(ckpt_dir) / f"round{r}" if rounds > 1 else ckpt_dir),
            filter_spec=filter_spec,
            progress=progress,
            resume=ckpt_dir is not None,
            validity_fn=validity_fn,
        )
        model = result.model
        if best is None or result.best_val < best_val:  # the best model over the rounds (same validation)
            best, best_val = model, result.best_val
    return best


def model_record(model: ColumnModel, rec: SiteRecord) -> SiteRecord:
    return replace(rec, base=model.with_site_index(rec.base, rec.site))


def model_spun_up_state(model: ColumnModel, forcing: Forcing, base: dict):
    """The state ``model`` reaches by cycling the first year (at most) of ``forcing`` (prediction's
    initial state)."""
    params = model.site_params(base)
    period = spinup_period(forcing)
    state0, _ = spin_up(model.land, params, forcing, dynamic=model.dynamic(forcing, params), period=period,
                        max_cycles=5, tol_temp=0.05, tol_water=0.5)  # fmt: skip
    return state0


def spinup_period(forcing: Forcing) -> int:
    return int(min(forcing.n_steps, SPINUP_MAX_DAYS * 86400.0 / forcing.time_step_s))


def record_windows(model: ColumnModel, records: Sequence[SiteRecord],
                   weights: Sequence[np.ndarray] | None = None) -> dict:
    """Every record as one window (the ``make_windows`` layout, W = number of records).

    Each window starts from ``model``'s spun-up state and first repeats the record's spin-up cycle
    (its first year at most) without loss, then runs the record with the record's mask up to its
    last step with a target (later steps cannot change the loss); the gradient thus reaches the
    state at the record's start through one cycle. Shorter windows are padded at the end by
    repeating their last step, with the mask cleared."""
    parts = []
    for rec in records:
        period = spinup_period(rec.forcing)
        used = np.flatnonzero(rec.mask.any(axis=-1))
        stop = int(used[-1]) + 1 if used.size else 1
        rec = replace(rec, obs=rec.obs[:stop], mask=rec.mask[:stop], rnet=rec.rnet[:stop], qg=rec.qg[:stop])
        idx = np.concatenate([np.arange(period), np.arange(stop)])
        pad = lambda a, fill: np.concatenate([np.full((period,) + a.shape[1:], fill, a.dtype), a])  # noqa: E731
        state0 = jax.tree_util.tree_map(np.asarray, model_spun_up_state(model, rec.forcing, rec.base))
        parts.append((rec, idx, state0, pad(rec.obs, np.nan), pad(rec.mask, False), pad(rec.rnet, np.nan),
                      pad(rec.qg, np.nan)))  # fmt: skip
    length = max(len(p[1]) for p in parts)

    def extend(a, fill=None):  # to the common length: repeat the last step, or ``fill``
        tail = np.repeat(a[-1:], length - len(a), axis=0) if fill is None else \
            np.full((length - len(a),) + a.shape[1:], fill, a.dtype)
        return np.concatenate([a, tail])

    return {
        "forcing": _concat_trees([jax.tree_util.tree_map(lambda a, i=idx: extend(np.asarray(a)[i]), r.forcing)
                                  for r, idx, *_ in parts], axis=1),  # fmt: skip
        "state0": _concat_trees([p[2] for p in parts], axis=0),
        "base": _concat_trees([p[0].base for p in parts], axis=0),
        "obs": np.stack([extend(p[3], np.nan) for p in parts], axis=1),
        "mask": np.stack([extend(p[4], False) for p in parts], axis=1),
        "rnet": np.stack([extend(p[5], np.nan) for p in parts], axis=1),
        "qg": np.stack([extend(p[6], np.nan) for p in parts], axis=1),
        "weight": np.stack(_default_weights(records, weights), axis=0),
    }


def _with_model_trajectory(model: ColumnModel, rec: SiteRecord) -> SiteRecord:
    """A copy of ``rec`` whose initial state is ``model``'s spun-up state and whose window states
    come from ``model``'s own continuous rollout from there."""
    state0 = model_spun_up_state(model, rec.forcing, rec.base)
    _, out = _run_jit(model, rec.forcing, rec.base, state0)
    return replace(rec, state0=state0, default_out={k: np.asarray(out[k]) for k in STATE_OUTPUTS})


def predict_column_model(model: ColumnModel, ds: xr.Dataset) -> dict[str, np.ndarray]:
    """ALMA outputs over the whole record of ``ds``, from a state spun up with the trained model."""
    dtype = jnp.zeros(0).dtype
    forcing = forcing_from_datasets([ds], dtype=dtype)
    base = {k: jnp.asarray(v, dtype=dtype) for k, v in site_base_params(ds).items()}
    base = model.with_site_index(base, _site(ds))
    _, out = _run_jit(model, forcing, base, model_spun_up_state(model, forcing, base))
    return {k: np.asarray(out[k])[:, 0] for k in PREDICTION_OUTPUTS}


def training_config(cfg, options) -> Any:
    """The run's training section with the model's own overrides (lr, epochs, patience)."""
    update = {k: getattr(options, k) for k in ("lr", "epochs", "patience") if getattr(options, k, None) is not None}
    tc = cfg.training.model_copy(update=update)
    if tc.epochs is None and not tc.two_phase.enabled:
        tc = tc.model_copy(update={"epochs": 30})
    return tc
