"""Regional models (seed 000): the spatiotemporal parameteriser setting the gridded physics' K_h and
r_s fields, and the baselines it is judged against.

- ``hybrid``: :class:`RegionalHybrid` = ``neural.SpatiotemporalParameteriser`` (forcing, derived
  physical features and land cover -> K_h, r_s on every cell and step, bounded to seed 000's
  ranges) + ``physics.regional.RegionalModel`` (LaD columns under the finite-volume air layer) with
  those fields prescribed; trained end to end through the rollout on whatever is observed (tower
  fluxes at a few cells, a gappy surface temperature product), with phase 2's physics terms: the
  energy residual, L1 on the K_h field (seed eq. 8) and the discovery term, the misfit between the
  network's log K_h and a co-trained branched law a u^b |Ri|^c (never |Ri| for both branches);
- ``fixed_kh``: the same physics with K_h from the Louis stability scheme and LaD's r_s per class
  (seed 000's "traditional PGML": exchange coefficients from empirical formulas);
- ``cnn_lstm``: the same encoder-decoder predicting Qh and Qle directly (no physics), trained on the
  same tower fluxes.

Data come as a :class:`RegionData` (``region_data``): a gridded canonical dataset on (time, y, x)
with forcing including the wind components, a land-cover map and observations (NaN = missing). The
networks see the forcing normalised physically (``data.gridprep.physical_normalise``), the derived
features (wind shear, temperature gradient, bulk Richardson number, with a radiative estimate of
the surface temperature, since the parameteriser runs before the physics), the land-cover classes
one-hot and the normalised elevation.

Training windows (``window`` hours) cover the whole grid; each starts from the state that the
fixed-K_h physics reaches there (carried through the record), and its first ``warmup`` hours are
not scored.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from ..constants import STEFAN_BOLTZMANN
from ..data.gridprep import land_cover_fractions, physical_normalise
from ..data.schema import IGBP_BY_INDEX, DataError
from ..neural import SpatiotemporalOptions, SpatiotemporalParameteriser, physical_features
from ..physics import default_params, forcing_from_datasets, rollout
from ..physics.air_layer import AirLayer
from ..physics.exchange import ExchangeLaw
from ..physics.lad import LaDModel
from ..physics.regional import GridForcing, RegionalModel

__all__ = [
    "RegionData", "region_data", "RegionalHybrid", "CNNLSTM", "fixed_kh_model", "regional_physics", "build_hybrid",
    "build_cnn_lstm", "hybrid_loss", "cnn_lstm_loss", "make_batches", "blocked_split", "window_states", "window_starts",
    "train_regional", "predict_regional", "REGIONAL_FORCING",
]

#: the dynamic inputs of the networks, in order (ALMA names)
REGIONAL_FORCING = ("Tair", "Qair", "Psurf", "Wind_E", "Wind_N", "SWdown", "LWdown", "Precip")
#: LaD defaults for classes LaD does not have (the land cover of a region may have water)
LAD_CLASS_OF = {"WAT": "WET", "SNO": "BSV"}
#: loss scales: fluxes in 100 W m-2, surface temperature in 2 K
SCALES = {"Qh": 100.0, "Qle": 100.0, "AvgSurfT": 2.0}
TARGETS = ("Qh", "Qle", "AvgSurfT")


@dataclass
class RegionData:
    """A gridded record prepared for the regional models (arrays over the N = ny * nx cells, C order).

    Attributes:
        shape: (ny, nx)
        forcing: (T, N) ``GridForcing``
        variables: (V, T, ny, nx) network inputs: normalised forcing and derived features
        static: (S, ny, nx) land-cover one-hot and normalised elevation
        params: LaD parameters per cell ((N,) arrays; defaults of each cell's class)
        observed: name -> (T, N) observations with NaN where missing (``TARGETS`` present)
        classes: the IGBP classes of the land-cover map, in the one-hot's order
        cell_class: (N,) index into ``classes``
        cell_size: [m]
        time: (T,) datetime64
    """

    shape: tuple[int, int]
    forcing: GridForcing
    variables: np.ndarray
    static: np.ndarray
    params: dict
    observed: dict[str, np.ndarray]
    classes: tuple[str, ...]
    cell_class: np.ndarray
    cell_size: float
    time: np.ndarray
    source: xr.Dataset = field(repr=False, default=None)

    @property
    def n_steps(self) -> int:
        return self.forcing.n_steps

    def window(self, start: int, length: int) -> tuple[GridForcing, np.ndarray]:
        return self.forcing.at(slice(start, start + length)), self.variables[:, start : start + length]


def _radiative_surface_temperature(ds: xr.Dataset) -> np.ndarray:
    """A surface temperature the parameteriser can know before the physics runs: the radiative
    equilibrium of the absorbed radiation, ((0.8 SW + LW) / sigma)^(1/4), limited to Tair +- 15 K
    (day: warmer than the air, night: colder, which is what the Richardson number needs)."""
    t_rad = ((0.8 * ds["SWdown"].values + ds["LWdown"].values) / STEFAN_BOLTZMANN) ** 0.25
    tair = ds["Tair"].values
    return np.clip(t_rad, tair - 15.0, tair + 15.0)


def region_data(ds: xr.Dataset, dtype=None, *, constants: dict | None = None) -> RegionData:
    """A :class:`RegionData` from a gridded canonical dataset on (time, y, x) (e.g.
    ``data.virtual_region.virtual_region``) with every cell complete; a missing forcing variable
    or a gap is a DataError naming it."""
    file = ds.attrs.get("source_file", ds.attrs.get("site_id", "<grid>"))
    missing = [v for v in (*REGIONAL_FORCING, "Wind", "land_cover") if v not in ds]
    if missing:
        raise DataError(f"{file}: the regional models need {', '.join(missing)}")
    for name in (*REGIONAL_FORCING, "Wind"):
        bad = ~np.isfinite(ds[name].values)
        if bad.any():
            t, y, x = np.argwhere(bad)[0]
            raise DataError(f"{file}: {name} is missing at time {str(ds.time.values[t])[:16]}, cell (y={y}, x={x}) "
                            f"and {int(bad.sum()) - 1} more values; the regional grid must be complete")
    ds = ds.transpose("time", "y", "x", ...)
    ny, nx = ds.sizes["y"], ds.sizes["x"]
    n, t = ny * nx, ds.sizes["time"]
    dtype = jnp.zeros(0).dtype if dtype is None else dtype
    grid = ds[[*REGIONAL_FORCING, "Wind"]].stack(column=("y", "x")).transpose("time", "column")
    column_forcing = forcing_from_datasets([grid.assign_attrs(time_step_s=float(ds.attrs["time_step_s"]))], dtype=dtype)
    cols = lambda a: jnp.asarray(np.reshape(np.asarray(a), (t, n)), dtype)  # noqa: E731
    forcing = GridForcing(column_forcing, cols(ds["Wind_E"].values), cols(ds["Wind_N"].values))

    codes = np.asarray(ds["land_cover"].values).reshape(-1)
    classes = tuple(IGBP_BY_INDEX[c - 1] for c in sorted(set(codes.tolist())))
    onehot = land_cover_fractions(ds["land_cover"], classes).values
    cell_class = np.array([classes.index(IGBP_BY_INDEX[c - 1]) for c in codes])
    lad_codes = [LAD_CLASS_OF.get(IGBP_BY_INDEX[c - 1], IGBP_BY_INDEX[c - 1]) for c in codes]
    params = default_params(lad_codes, dtype=dtype)

    normalised, _ = physical_normalise(ds[list(REGIONAL_FORCING)], constants=constants)
    height = np.asarray(params["reference_height"]).reshape(ny, nx)
    z0 = np.asarray(params["z0m"]).reshape(ny, nx)
    derived, _ = physical_features(ds["Tair"].values, ds["Qair"].values, ds["Wind_E"].values, ds["Wind_N"].values,
                                   ds["Psurf"].values, _radiative_surface_temperature(ds), height=height, z0=z0,
                                   grid_spacing=float(ds.attrs.get("cell_size_m", 1000.0)))
    derived = np.asarray(derived)
    derived = np.sign(derived) * np.log1p(np.abs(derived))  # heavy-tailed (Ri): a signed log scale
    variables = np.concatenate([np.stack([normalised[v].values for v in REGIONAL_FORCING]), derived]).astype(dtype)
    elevation = ds["elevation"].values if "elevation" in ds else np.zeros((ny, nx))
    elevation = (elevation - np.mean(elevation)) / 500.0
    static = np.concatenate([onehot, elevation[None]]).astype(dtype)
    observed = {name: np.reshape(ds[name].values, (t, n)).astype(dtype) for name in TARGETS if name in ds}
    return RegionData((ny, nx), forcing, variables, static, params, observed, classes, cell_class,
                      float(ds.attrs.get("cell_size_m", 1000.0)), ds.time.values, ds)


#: prediction halves a step where the coupling residual exceeds the closed loop's 10 W m-2 (training
#: takes every step whole: each refinement level is one more compiled copy of the step)
PREDICT_REFINEMENTS = 1


def regional_physics(data: RegionData, land: LaDModel | None = None, boundary: str = "open") -> RegionalModel:
    """The gridded physics for ``data``'s grid, with transport sub-steps for its winds, for training
    (no refinement; ``predict_regional`` allows ``PREDICT_REFINEMENTS``)."""
    air = AirLayer(data.shape, dx=data.cell_size, dy=data.cell_size, boundary=boundary)
    return RegionalModel(air, land=land or LaDModel(), max_refinements=0).for_forcing(data.forcing)


def fixed_kh_model(data: RegionData) -> RegionalModel:
    """seed 000's traditional PGML: K_h from the Louis scheme, LaD's r_s per class, nothing learned."""
    return regional_physics(data)


class RegionalHybrid(eqx.Module):
    """The parameteriser and the co-trained discovery law; the physics is static (``physics``)."""

    net: SpatiotemporalParameteriser
    law: ExchangeLaw
    physics: RegionalModel = eqx.field(static=True)

    def fields(self, variables, static, key=None) -> tuple[jax.Array, jax.Array]:
        """(K_h, r_s) as (T, N) from (V, T, ny, nx) inputs."""
        out = self.net(variables, static, key=key)
        t = out.shape[1]
        return out[0].reshape(t, -1), out[1].reshape(t, -1)

    def run(self, params, forcing: GridForcing, variables, static, state0=None, key=None, chunk=24):
        """Rollout with the predicted fields: (final state, outputs incl. Kh, rs, RiB)."""
        kh, rs = self.fields(variables, static, key)
        return rollout(self.physics, params, forcing, state0, dynamic={"Kh": kh, "rs": rs}, chunk=chunk)


class CNNLSTM(eqx.Module):
    """The pure-network baseline: the same encoder-decoder (3-D convolutions, Bi-GRU, attention,
    transposed convolutions) predicting Qh and Qle directly, bounded to [-300, 900] W m-2."""

    net: SpatiotemporalParameteriser

    def predict(self, variables, static, key=None) -> dict[str, jax.Array]:
        out = self.net(variables, static, key=key)
        t = out.shape[1]
        return {"Qh": out[0].reshape(t, -1), "Qle": out[1].reshape(t, -1)}


FLUX_BOUNDS = {"Qh": (-300.0, 900.0), "Qle": (-300.0, 900.0)}


def build_hybrid(data: RegionData, options: SpatiotemporalOptions | None = None, seed: int = 0) -> RegionalHybrid:
    key = jax.random.key(seed)
    dtype = data.variables.dtype
    net = SpatiotemporalParameteriser(data.variables.shape[0], data.static.shape[0], options=options,
                                      dtype=dtype, key=key)
    law = ExchangeLaw.neutral(dtype=dtype)
    return RegionalHybrid(net, law, regional_physics(data))


def build_cnn_lstm(data: RegionData, options: SpatiotemporalOptions | None = None, seed: int = 0) -> CNNLSTM:
    net = SpatiotemporalParameteriser(data.variables.shape[0], data.static.shape[0], names=("Qh", "Qle"),
                                      prior={"Qh": 50.0, "Qle": 50.0}, bounds=FLUX_BOUNDS, options=options,
                                      dtype=data.variables.dtype, key=jax.random.key(seed))
    return CNNLSTM(net)


def window_states(model: RegionalModel, data: RegionData, starts, params=None):
    """The fixed-K_h physics' state at each window start (one rollout carried through the record)."""
    params = data.params if params is None else params
    run = jax.jit(lambda s, p, f: rollout(model, p, f, s, chunk=None)[0])
    states, state, t = {}, model.init_state(params, data.forcing), 0
    for start in sorted(starts):
        if start > t:
            state = run(state, params, data.forcing.at(slice(t, start)))
            t = start
        states[start] = state
    return states


def masked_mse(pred, obs, mask):
    """Mean of (pred - obs)^2 over ``mask`` (0 when nothing is observed)."""
    diff = jnp.where(mask, pred - jnp.where(mask, obs, 0.0), 0.0)
    return jnp.sum(diff**2) / jnp.maximum(jnp.sum(mask), 1.0)


def hybrid_loss(model: RegionalHybrid, batch, key, weights):
    """Scaled MSE of the observed targets after the warm-up, plus the phase-2 terms."""
    _, out = model.run(batch["params"], batch["forcing"], batch["variables"], batch["static"], batch["state"], key)
    terms = {}
    data_loss = 0.0
    for name in TARGETS:
        obs = batch["obs"][name]
        mask = jnp.isfinite(obs) & batch["scored"][:, None]
        term = masked_mse(out[name] / SCALES[name], obs / SCALES[name], mask)
        terms[f"mse_{name}"] = term
        data_loss = data_loss + term
    # phase 2 (seed eqs. 6, 8, 9): energy residual of every column and of the air layer [W m-2],
    # scaled like the fluxes; L1 on the K_h field; the law's misfit to the network's K_h
    energy = jnp.mean(jnp.abs(out["Rnet"] - out["Qh"] - out["Qle"] - out["Qg"] - out["Qf"])) \
        + jnp.mean(out["air_energy_residual"])
    sparsity = jnp.mean(jnp.abs(out["Kh"]))
    ri = jax.lax.stop_gradient(out["RiB"])
    discovery = jnp.mean((jnp.log(out["Kh"]) - model.law.log_kh(batch["forcing"].column.wind, ri)) ** 2)
    terms.update(energy=energy, sparsity=sparsity, discovery=discovery)
    loss = data_loss + weights["energy"] * energy / SCALES["Qh"] + weights["sparsity"] * sparsity \
        + weights["discovery"] * discovery
    return loss, terms


def cnn_lstm_loss(model: CNNLSTM, batch, key, weights):
    out = model.predict(batch["variables"], batch["static"], key)
    terms = {}
    for name in ("Qh", "Qle"):
        obs = batch["obs"][name]
        mask = jnp.isfinite(obs) & batch["scored"][:, None]
        terms[f"mse_{name}"] = masked_mse(out[name] / SCALES[name], obs / SCALES[name], mask)
    return sum(terms.values()), terms


def make_batches(data: RegionData, scored_steps: np.ndarray, window: int, warmup: int, states: dict | None):
    """Batches of whole-grid windows of ``window`` steps through the record (consecutive windows
    overlap by ``warmup``, whose steps are not scored); a window's loss uses only the steps where
    ``scored_steps`` (a (T,) bool mask: the split) is set; windows with none are left out. The
    networks see the forcing of every step of a window (it is known at prediction too)."""
    batches = []
    for start in window_starts(data.n_steps, window, warmup):
        scored = np.asarray(scored_steps[start : start + window]).copy()
        scored[:warmup] = False
        if not scored.any():
            continue
        forcing, variables = data.window(start, window)
        batch = {
            "forcing": forcing, "variables": jnp.asarray(variables), "static": jnp.asarray(data.static),
            "params": data.params, "scored": jnp.asarray(scored),
            "obs": {k: jnp.asarray(v[start : start + window]) for k, v in data.observed.items()},
        }
        if states is not None:
            batch["state"] = states[start]
        batches.append(batch)
    return batches


def window_starts(n_steps: int, window: int, warmup: int) -> list[int]:
    """Starts of the windows that cover ``n_steps`` (the last one ends at the record's end)."""
    if n_steps < window:
        return []
    starts = list(range(0, n_steps - window + 1, window - warmup))
    if starts[-1] + window < n_steps:
        starts.append(n_steps - window)
    return starts


#: the blocked split of a record in blocks of BLOCK_DAYS days, cycling through SPLIT_CYCLE
BLOCK_DAYS = 3
SPLIT_CYCLE = ("train", "val", "test", "train", "train")


def blocked_split(n_steps: int, steps_per_day: int = 24) -> dict[str, np.ndarray]:
    """(T,) masks ``train``, ``val``, ``test``: blocks of ``BLOCK_DAYS`` days assigned in the
    cycle ``SPLIT_CYCLE`` (3/5, 1/5, 1/5), so every split spans the record."""
    block = np.arange(n_steps) // (BLOCK_DAYS * steps_per_day)
    label = np.array(SPLIT_CYCLE)[block % len(SPLIT_CYCLE)]
    return {name: label == name for name in ("train", "val", "test")}


def _val_fn(loss_fn, batches):
    """Mean data loss (no phase-2 terms, no dropout) over the validation windows."""
    zero = {"energy": 0.0, "sparsity": 0.0, "discovery": 0.0}
    loss = eqx.filter_jit(lambda m, b: loss_fn(m, b, None, zero)[0])

    def val(model) -> float:
        return float(np.mean([float(loss(model, b)) for b in batches]))

    return val


def train_regional(model, data: RegionData, cfg, *, split: dict[str, np.ndarray], window: int = 48,
                   warmup: int = 12, checkpoint_dir=None, progress: bool = True, resume: bool = False):
    """Train a :class:`RegionalHybrid` or :class:`CNNLSTM` on ``data``'s observations at the
    ``split["train"]`` steps, early-stopping on the ``split["val"]`` steps (``training.trainer.fit``:
    AdamW, clipping, the learning-rate schedule and two-phase weights of ``cfg``, a ``TrainConfig``).
    Returns ``fit``'s result (``.model``, ``.history``, ...)."""
    from ..training.trainer import fit

    hybrid = isinstance(model, RegionalHybrid)
    states = window_states(model.physics, data, window_starts(data.n_steps, window, warmup)) if hybrid else None
    train_batches = make_batches(data, split["train"], window, warmup, states)
    val_batches = make_batches(data, split["val"], window, warmup, states)
    if not train_batches or not val_batches:
        raise ValueError(f"train_regional: {data.n_steps} steps give no training or no validation window of "
                         f"{window} steps")
    loss_fn = hybrid_loss if hybrid else cnn_lstm_loss
    return fit(model, loss_fn, train_batches, _val_fn(loss_fn, val_batches), cfg, checkpoint_dir,
               progress=progress, resume=resume)


def predict_regional(model, data: RegionData, *, window: int = 48, warmup: int = 12, key=None) -> dict:
    """Outputs over the whole record ((T, N) arrays; ``rs_field``: the r_s prescribed or set by the
    parameters, where the output ``rs`` is the effective resistance with water stress). Physics models run continuously; the hybrid's
    fields are computed window by window (each window's fields kept after its warm-up, the first
    window's from its start) and the physics runs through them continuously; the CNN-LSTM
    predicts window by window the same way."""
    if isinstance(model, RegionalModel):
        model = replace(model, max_refinements=PREDICT_REFINEMENTS)
        _, out = jax.jit(lambda p, f: rollout(model, p, f, chunk=None))(data.params, data.forcing)
        rs = np.asarray(data.params["rs_min"] * data.params["rs_scale"])
        return {**{k: np.asarray(v) for k, v in out.items()}, "rs_field": np.broadcast_to(rs, out["Qh"].shape)}
    starts = window_starts(data.n_steps, window, warmup)
    cnn = isinstance(model, CNNLSTM)
    names = ("Qh", "Qle") if cnn else ("Kh", "rs")
    net = eqx.filter_jit((lambda m, v, s: m.predict(v, s, key)) if cnn else
                         (lambda m, v, s: dict(zip(names, m.fields(v, s, key)))))
    pieces = {k: np.zeros((data.n_steps, data.forcing.n_sites), data.variables.dtype) for k in names}
    done = 0
    for start in starts:
        pred = net(model, jnp.asarray(data.variables[:, start : start + window]), jnp.asarray(data.static))
        for k in names:
            pieces[k][done : start + window] = np.asarray(pred[k])[done - start :]
        done = start + window
    if cnn:
        return pieces
    physics = replace(model.physics, max_refinements=PREDICT_REFINEMENTS)
    # the record goes in as arguments: arrays a jitted function closes over become constants of the
    # compiled program (slower to compile, held twice)
    run = jax.jit(lambda p, f, fields: rollout(physics, p, f, dynamic=fields, chunk=None))
    _, out = run(data.params, data.forcing, {"Kh": jnp.asarray(pieces["Kh"]), "rs": jnp.asarray(pieces["rs"])})
    return {**{k: np.asarray(v) for k, v in out.items()}, "rs_field": pieces["rs"]}
