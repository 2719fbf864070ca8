"""The model every LaD-based model is: :class:`ColumnModel`, and how it runs on a Domain.

A ColumnModel holds the land model (an ``AbstractLandModel``, whose closure may contain
networks), the unconstrained offsets of the calibrated parameters, and optionally a sequence
network producing time-varying parameters (dynamic parameterisation). Its training lives in
``models/column_fit.py``; its windows, batches and multi-site loss weights in ``training/``.

Per-site offsets (a ``physics`` calibrated with ``per_site`` on several sites) and new sites: a
column's offsets are ``weights @ deltas`` with one weight row per column (``SITE_WEIGHTS`` in the
parameters). A training site's row picks its own offsets; any other site or grid cell gets the
mean of the training sites of its IGBP class, or of all training sites when none shares it
(:meth:`ColumnModel.transfer`), and ``provenance`` says which.

MC dropout: a model whose networks have dropout predicts the mean of ``mc_samples`` rollouts with
dropout on (``predict_column_model``; the samples: ``sample_column_model``), with the predictive SD
of Qh and Qle (``neural.mc_dropout``). The key of a rollout is split between the sequence network and
the rollout, which gives every step its own key (``physics.rollout``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import replace

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from ..data import loss_steps, usable_targets
from ..data.checks import check_albedo_product
from ..data.schema import DataError, DataWarning, site_label
from ..domain import Domain
from ..neural import MC_KEY, MC_SAMPLES, dropout_rate, mc_batch_size, mc_dropout
from ..physics import (
    ALLOWED_IGBP,
    PARAMETERS,
    AbstractLandModel,
    Forcing,
    default_params,
    forcing_from_datasets,
    from_unconstrained,
    rollout,
    spin_up,
    to_unconstrained,
)
from ..training.windows import STATE_OUTPUTS, SiteRecord
from .features import STATIC_KEY, forcing_features, static_features

__all__ = ["COLUMN_TARGETS", "DEFAULT_COLUMN_TARGETS", "ColumnModel", "DEFAULT_IGBP", "PREDICTION_OUTPUTS",
           "STATIC_OFFSETS", "column_igbp", "domain_base_params", "domain_inputs", "predict_column_model",
           "prepare_site", "product_albedo", "sample_column_model", "site_base_params"]  # fmt: skip

#: ALMA outputs written to the predictions files (SoilTemp keeps its layer axis).
PREDICTION_OUTPUTS = (
    "Qh", "Qle", "Qg", "Rnet", "Evap", "Qs", "Qsb", "SoilTemp", "SoilMoist", "SWE", "GWS",
    "AvgSurfT", "SR", "Kh", "ra", "rs", "RiB", "Qf", "Qirrig",
)  # fmt: skip
SITE_WEIGHTS = "site_weights"  # key of the (N, S) per-site offset weights in the parameters
#: output of ``ColumnModel.run`` with a parameter network: the (N, P) offsets it gave the columns
STATIC_OFFSETS = "static_offsets"
SPINUP_MAX_DAYS = 365.0
#: The class whose LaD defaults a column with no land-cover class gets (said in the provenance).
DEFAULT_IGBP = "GRA"
#: What the column models (physics and the hybrids) may train on: the turbulent fluxes, and the
#: ground heat flux, net radiation and radiometric surface temperature where a site observes them.
COLUMN_TARGETS = ("Qle", "Qh", "Qg", "Rnet", "AvgSurfT")
#: What they train on unless their options say otherwise.
DEFAULT_COLUMN_TARGETS = ("Qle", "Qh")
#: Parameters a hybrid's networks set, whose MC-dropout spread is written (``<name>_sd``).
LEARNED_PARAMETERS = ("Kh", "ra", "rs")
#: A rollout output ``<target><SIGMA_SUFFIX>`` is the aleatoric SD [W m-2] a Gaussian model gives a target.
SIGMA_SUFFIX = "_sigma"
#: the unit of a Gaussian column model's aleatoric SD [W m-2] (its head starts at this SD)
SIGMA_SCALE = 50.0


# ------------------------------------------------------------------------------------ model


class ColumnModel(eqx.Module):
    """A LaD column with calibrated parameter offsets and optional dynamic parameters.

    Attributes:
        land: the land model
        deltas: unconstrained offsets of the calibrated parameters (value =
            from_unconstrained(to_unconstrained(default) + gain * delta)): scalars shared by all
            columns, or one per training site of ``sites`` (per-site calibration)
        dynamic_net: optional network ``forcing features (T, N, F) -> raw (T, N, P)``
        dynamic_head: bounded head mapping the raw outputs to multipliers
        dynamic_names: parameters the multipliers scale, step by step
        law: optional discovery law K_h = a u^b |Ri|^c (stable and unstable branches) trained jointly (phase 2)
        chunk: steps per checkpointed chunk of the rollout
        sites, site_classes: the training sites of per-site offsets and their IGBP classes
        calibrated_on: the training sites of shared offsets (for ``provenance``)
        mc_samples: MC-dropout passes of a prediction (used only when a network has dropout)
        replaced: dynamic parameters a discovered law sets instead of the network (``with_exchange_law``)
        aleatoric_targets: the targets whose aleatoric SD ``<target>_sigma`` [W m-2] the land model
            outputs at every step (``likelihood: gaussian``; trained on the Gaussian NLL); () for MSE
        static_inputs: static attributes of each column (``features.STATIC_INPUTS``) that the
            networks take besides the forcing and states, as ``params[STATIC_KEY]`` (N, S): what lets
            one network set different parameters at different sites without per-site parameters
        parameter_net: optional network ``static attributes (S,) -> (P,)`` giving each column
            unconstrained offsets of ``static_parameters`` from its defaults (differentiable
            parameter learning, Tsai et al. 2021: one network for every site, so a new site gets
            its parameters from its attributes); the offsets are the output ``STATIC_OFFSETS``
        time_steps: the time steps [s] of the training data: a ``dynamic_net`` learned its memory at
            them, and a domain at another step is refused (``registry.check_time_step``)
    """

    land: AbstractLandModel
    deltas: dict
    dynamic_net: eqx.Module | None = None
    dynamic_head: eqx.Module | None = None
    dynamic_names: tuple[str, ...] = eqx.field(static=True, default=())
    law: eqx.Module | None = None
    chunk: int = eqx.field(static=True, default=96)
    delta_gain: float = eqx.field(static=True, default=1.0)  # Adam step on the offsets = gain x lr
    sites: tuple[str, ...] = eqx.field(static=True, default=())
    site_classes: tuple[str, ...] = eqx.field(static=True, default=())
    calibrated_on: tuple[str, ...] = eqx.field(static=True, default=())  # sites of shared offsets
    mc_samples: int = eqx.field(static=True, default=MC_SAMPLES)
    replaced: tuple[str, ...] = eqx.field(static=True, default=())  # dynamic parameters a law sets instead
    aleatoric_targets: tuple[str, ...] = eqx.field(static=True, default=())  # Gaussian: rollout gives <t>_sigma
    static_inputs: tuple[str, ...] = eqx.field(static=True, default=())  # static attributes the networks take
    dynamic_aleatoric: eqx.Module | None = None  # hybrid_lstm, likelihood gaussian: the SDs' GaussianHead
    parameter_net: eqx.Module | None = None  # static attributes -> offsets of static_parameters
    static_parameters: tuple[str, ...] = eqx.field(static=True, default=())
    time_steps: tuple[float, ...] = eqx.field(static=True, default=())  # of the training data (dynamic_net's memory)

    # ---------------------------------------------------------------------- parameters
    def site_params(self, base: dict) -> dict:
        """Parameters of each column: defaults with the calibrated and learned offsets applied."""
        return self._params_and_offsets(base)[0]

    def _params_and_offsets(self, base: dict) -> tuple[dict, jax.Array | None]:
        """``site_params`` and the parameter network's offsets (``static_offsets``; None without one)."""
        out = {k: v for k, v in base.items() if k != SITE_WEIGHTS}
        for name, delta in self.deltas.items():
            if self.sites:
                delta = base[SITE_WEIGHTS] @ delta
            out[name] = from_unconstrained(name, to_unconstrained(name, base[name]) + self.delta_gain * delta)
        if self.parameter_net is None:
            return out, None
        offsets = self.static_offsets(base)
        for i, name in enumerate(self.static_parameters):
            out[name] = from_unconstrained(name, to_unconstrained(name, out[name]) + offsets[:, i])
        return out, offsets

    def static_offsets(self, base: dict) -> jax.Array:
        """(N, P) unconstrained offsets of ``static_parameters`` that ``parameter_net`` gives each
        column from its static attributes ``base[STATIC_KEY]``."""
        return jax.vmap(self.parameter_net)(base[STATIC_KEY])

    def per_site(self, sites: Sequence[str], classes: Sequence[str]) -> ColumnModel:
        """A copy whose offsets are one per site (all starting from the shared values)."""
        sites = tuple(sites)
        deltas = {k: jnp.broadcast_to(v, (len(sites),)) + 0 for k, v in self.deltas.items()}
        return replace(self, deltas=deltas, sites=sites, site_classes=tuple(classes))

    def transfer(self, site: str, igbp: str) -> tuple[np.ndarray, str]:
        """(S,) weights of the training sites' offsets for a column, and where they come from."""
        n = len(self.sites)
        if site in self.sites:
            w = np.zeros(n)
            w[self.sites.index(site)] = 1.0
            return w, f"calibrated at {site}"
        same = [i for i, c in enumerate(self.site_classes) if c and c == igbp]
        chosen = same or list(range(n))
        w = np.zeros(n)
        w[chosen] = 1.0 / len(chosen)
        names = ", ".join(self.sites[i] for i in chosen)
        how = f"same IGBP class {igbp}" if same else "no training site of its class"
        return w, f"mean of the offsets calibrated at {names} ({how})"

    def with_site_weights(self, base: dict, sites: Sequence[str], classes: Sequence[str]) -> tuple[dict, list[str]]:
        """``base`` with the per-site offset weights of these columns, and their provenance."""
        learned = (f"; {', '.join(self.static_parameters)} set from its static attributes by the parameter network"
                   if self.parameter_net is not None else "")
        if not self.sites:
            if not self.deltas:
                where = "parameter-table defaults of its IGBP class"
            elif self.calibrated_on:
                where = f"shared offsets calibrated at {', '.join(self.calibrated_on)}"
            else:
                where = "shared offsets"
            return base, [where + learned] * len(sites)
        rows = [self.transfer(s, c) for s, c in zip(sites, classes)]
        dtype = jnp.asarray(base["albedo"]).dtype
        return ({**base, SITE_WEIGHTS: jnp.asarray(np.stack([r[0] for r in rows]), dtype)},
                [r[1] + learned for r in rows])

    def with_static(self, base: dict, static: Mapping, where: Sequence[str]) -> dict:
        """``base`` with the scaled static attributes the networks take (``static_inputs``; name ->
        (N,) values in ``static``, e.g. a Domain's static attributes or a site's attrs); ``where``
        names the N columns for errors. Canopy and measurement heights the site does not give are
        the ones the physics uses (class defaults)."""
        if not self.static_inputs:
            return base
        values = {k: np.atleast_1d(np.asarray(static[k])) for k in self.static_inputs if k in static}
        for name, used in (("canopy_height", "canopy_height"), ("measurement_height", "reference_height")):
            if name in values:
                v = np.asarray(values[name], float)
                values[name] = np.where(np.isfinite(v), v, np.asarray(base[used], float))
        dtype = jnp.asarray(base["albedo"]).dtype
        return {**base, STATIC_KEY: jnp.asarray(static_features(values, self.static_inputs, list(where)), dtype)}

    # ----------------------------------------------------------------------------- running
    def _sequence_outputs(self, forcing: Forcing, params: dict, key=None) -> jax.Array | None:
        """The sequence network's raw outputs (T, N, P [+ one SD per aleatoric target]), or None."""
        if self.dynamic_net is None:
            return None
        x = forcing_features(forcing)
        if self.static_inputs:  # the same static attributes at every step
            x = jnp.concatenate([x, jnp.broadcast_to(params[STATIC_KEY], x.shape[:-1] + params[STATIC_KEY].shape[-1:])],
                                axis=-1)
        return self.dynamic_net(x, key=key)

    def dynamic(self, forcing: Forcing, params: dict, key=None, raw: jax.Array | None = None) -> dict | None:
        """Time-varying parameters ``{name: (T, N)}`` from the sequence network (its ``raw`` outputs
        when given), or None."""
        return _scaled(params, self.dynamic_multipliers(forcing, params, key, raw))

    def dynamic_multipliers(self, forcing: Forcing, params: dict, key=None, raw: jax.Array | None = None) -> dict | None:
        """The sequence network's multipliers ``{name: (T, N)}`` of the parameters it sets (those a
        law replaced left out), or None."""
        raw = self._sequence_outputs(forcing, params, key) if raw is None else raw
        if raw is None:
            return None
        mult = self.dynamic_head(raw[..., : len(self.dynamic_names)])
        return {name: mult[..., i] for i, name in enumerate(self.dynamic_names) if name not in self.replaced}

    def with_exchange_law(self, law) -> ColumnModel:
        """The model with its learned K_h replaced by the closed form ``law`` (the symbolic step of
        ``hybridlsm discover``): the land model's exchange closure becomes the law, the networks'
        r_a multipliers and the calibrated ``ra_scale`` are dropped (the law gives r_a whole), and
        everything else (the r_s network, the other calibrated parameters) is kept."""
        deltas = {k: v for k, v in self.deltas.items() if k != "ra_scale"}
        return replace(self, land=self.land.with_exchange_law(law), deltas=deltas, law=None,
                       replaced=tuple({*self.replaced, "ra_scale"}))

    def run(self, forcing: Forcing, base: dict, state0, key=None):
        """Roll out from ``state0``; ``key`` (training, MC dropout) draws the dropout masks of every
        network, None runs the deterministic networks."""
        params, offsets = self._params_and_offsets(base)
        key_dynamic = key_land = None
        if key is not None:
            key_dynamic, key_land = jax.random.split(key)
            # without dropout in the land model its rollout stays the deterministic computation
            key_land = key_land if dropout_rate(self.land) > 0 else None
        raw = self._sequence_outputs(forcing, params, key_dynamic)
        mult = self.dynamic_multipliers(forcing, params, raw=raw)
        state, out = rollout(self.land, params, forcing, state0, _scaled(params, mult), self.chunk, key=key_land)
        if offsets is not None:  # (N, P): what the prior on the learned static parameters sees
            out = {**out, STATIC_OFFSETS: offsets}
        if mult is not None:  # ra_mult, rs_mult as a parameter network's step reports them (1 where a law sets it)
            ones = jnp.ones_like(out["Qh"])
            out = {**out, **{f"{name.removesuffix('_scale')}_mult": mult.get(name, ones) for name in self.dynamic_names}}
        if self.dynamic_aleatoric is not None:  # the sequence network's aleatoric SD of each target
            n = len(self.dynamic_names)
            out = {**out, **{f"{t}{SIGMA_SUFFIX}": SIGMA_SCALE * self.dynamic_aleatoric.std(raw[..., n + k])
                             for k, t in enumerate(self.aleatoric_targets)}}  # fmt: skip
        return state, out

    def spun_up_state(self, forcing: Forcing, base: dict, *, warn_for: str | None = None):
        """The state reached by cycling the first year (at most) of ``forcing`` (prediction's
        initial state). ``warn_for`` (a prediction: the domain's name): a ``DataWarning`` when
        the cycles did not converge, so that the prediction starts from a state still drifting
        (e.g. a record of a few days, whose cycles cannot dry or fill a soil)."""
        params = self.site_params(base)
        period = spinup_period(forcing)
        state0, info = spin_up(self.land, params, forcing, dynamic=self.dynamic(forcing, params),
                               period=period, max_cycles=SPINUP_CYCLES, tol_temp=SPINUP_TOL_TEMP,
                               tol_water=SPINUP_TOL_WATER)  # fmt: skip
        if warn_for is not None and not info["converged"]:
            days = period * forcing.time_step_s / 86400.0
            warnings.warn(f"{warn_for}: the spin-up ({info['cycles']} cycles of the record's first {days:g} days) did "
                          f"not converge (last change of the stores {info['max_water_change']:.3g} kg m-2, of the "
                          f"temperatures {info['max_temp_change']:.3g} K; tolerances {SPINUP_TOL_WATER:g}, "
                          f"{SPINUP_TOL_TEMP:g}): the prediction starts from a state that still drifts; a longer "
                          "record before the period of interest gives a settled one", DataWarning, stacklevel=2)
        return state0


def _scaled(params: dict, mult: dict | None) -> dict | None:
    """The time-varying parameters ``params[name] * multiplier`` ((T, N)), or None."""
    return None if mult is None else {name: params[name][None, :] * m for name, m in mult.items()}


#: the spin-up of a site record and of a prediction: at most this many cycles, until no temperature changes by more than
#: SPINUP_TOL_TEMP [K] and no store by more than SPINUP_TOL_WATER [kg m-2] between cycle ends
SPINUP_CYCLES, SPINUP_TOL_TEMP, SPINUP_TOL_WATER = 5, 0.05, 0.5


def spinup_period(forcing: Forcing) -> int:
    return int(min(forcing.n_steps, SPINUP_MAX_DAYS * 86400.0 / forcing.time_step_s))


@eqx.filter_jit
def run_jit(model: ColumnModel, forcing, base, state0):
    return model.run(forcing, base, state0)


# --------------------------------------------------------------------------- parameters


def column_igbp(igbp: str, where: str) -> tuple[str, str]:
    """The class whose LaD defaults a column gets, and a note when it is not its own."""
    igbp = (igbp or "").strip()
    if not igbp:
        return DEFAULT_IGBP, f"IGBP class unknown: {DEFAULT_IGBP} defaults"
    if igbp not in ALLOWED_IGBP:
        raise DataError(f"{where}: IGBP class {igbp!r} has no LaD parameters; allowed: {', '.join(ALLOWED_IGBP)}")
    if igbp == "WAT":
        return igbp, "open water: LaD has no lake; a column that never dries, with water's heat capacity"
    return igbp, ""


def site_base_params(ds: xr.Dataset, overrides: dict | None = None) -> dict:
    """Default parameters (N = 1) of a canonical site dataset from its IGBP class and heights (and
    its ``albedo`` attr, a product's, where it gives one)."""
    igbp, _ = column_igbp(str(ds.attrs.get("igbp", "")), site_label(ds))
    albedo = product_albedo([ds.attrs.get("albedo", np.nan)], [site_label(ds)], ds.attrs.get("source_file", site_label(ds)))
    return default_params([igbp], canopy_height=ds.attrs.get("canopy_height"),
                          measurement_height=ds.attrs.get("measurement_height"), overrides=overrides,
                          irrigated=ds.attrs.get("irrigated"), albedo=albedo)  # fmt: skip


def domain_base_params(domain: Domain, dtype=None) -> tuple[dict, list[str], list[str]]:
    """(N,) default parameters of every column, the classes used and a note per column. A column
    whose static ``albedo`` is given (a product's) runs it instead of its class default; the note
    says so, and says where a partial product leaves a column the class default."""
    classes, notes = [], []
    for cid, igbp in zip(domain.column_ids, domain.static_value("igbp")):
        c, note = column_igbp(str(igbp), f"{domain.name}/{cid}")
        classes.append(c)
        notes.append(note)
    # a domain written before albedo was a static attribute has none
    given = domain.static_value("albedo") if "albedo" in domain.static else np.full(len(classes), np.nan)
    albedo = product_albedo(given, [f"column {c}" for c in domain.column_ids], domain.name)
    if np.isfinite(albedo).any():
        notes = [n + ("; " if n else "") + (f"albedo {a:.3f} of the product" if np.isfinite(a)
                                            else "albedo: the class default (the product has none here)")
                 for n, a in zip(notes, albedo)]
    base = default_params(classes, canopy_height=domain.static_value("canopy_height").astype(float),
                          measurement_height=domain.static_value("measurement_height").astype(float),
                          irrigated=domain.static_value("irrigated").astype(float), albedo=albedo)  # fmt: skip
    return {k: jnp.asarray(v, dtype=dtype) for k, v in base.items()}, classes, notes


def product_albedo(values, names: Sequence[str], source: str, required=None) -> np.ndarray:
    """A product's albedo per column (NaN: none), checked against LaD's albedo bounds (DataError
    naming the column; ``required`` (N,): columns where a NaN is an error too)."""
    return check_albedo_product(np.asarray(values, float), list(names), file=source, required=required,
                                bounds=(PARAMETERS["albedo"].lower, PARAMETERS["albedo"].upper))


# ------------------------------------------------------------------------------ records


def _optional(ds: xr.Dataset, name: str) -> np.ndarray:
    return np.asarray(ds[name].values, dtype=np.float64) if name in ds else np.full(ds.sizes["time"], np.nan)


def prepare_site(ds: xr.Dataset, targets: Sequence[str], max_qc: int, *, model: ColumnModel | None = None,
                 cache: dict | None = None) -> SiteRecord:
    """One column's record: forcing, default parameters (with ``model``'s per-site offset weights),
    the default LaD spun up on it (cached in ``cache``, a run-scoped dict), targets and masks."""
    from ..physics import LaDModel

    dtype = jnp.zeros(0).dtype
    forcing = forcing_from_datasets([ds], dtype=dtype)
    base = {k: jnp.asarray(v, dtype=dtype) for k, v in site_base_params(ds).items()}
    site = site_label(ds)
    igbp, _ = column_igbp(str(ds.attrs.get("igbp", "")), site)
    if model is not None:
        base, _ = model.with_site_weights(base, [site], [igbp])
        base = model.with_static(base, ds.attrs, [site])
    key = ("spinup", site, str(ds["time"].values[0]), ds.sizes["time"], str(dtype))
    cache = {} if cache is None else cache
    if key not in cache:
        land = LaDModel()
        plain = {k: v for k, v in base.items() if k != SITE_WEIGHTS}
        cache[key], _ = spin_up(land, plain, forcing, period=spinup_period(forcing), max_cycles=SPINUP_CYCLES,
                                tol_temp=SPINUP_TOL_TEMP, tol_water=SPINUP_TOL_WATER)  # fmt: skip
    obs, mask = usable_targets(ds, targets, max_qc)
    split = loss_steps(ds)
    return SiteRecord(site, forcing, base, cache[key], obs, mask, _optional(ds, "Rnet"), _optional(ds, "Qg"),
                      split, igbp=igbp)  # fmt: skip


def with_model_trajectory(model: ColumnModel, rec: SiteRecord) -> SiteRecord:
    """A copy of ``rec`` whose initial state is ``model``'s spun-up state and whose window states
    come from ``model``'s own continuous rollout from there."""
    state0 = model.spun_up_state(rec.forcing, rec.base)
    _, out = run_jit(model, rec.forcing, rec.base, state0)
    return replace(rec, state0=state0, trajectory={k: np.asarray(out[k]) for k in STATE_OUTPUTS})


# ------------------------------------------------------------------------------ predict


def domain_params(model: ColumnModel, domain: Domain) -> dict:
    """(N,) parameters of a domain's columns with ``model``'s per-site offset weights and the static
    attributes its networks take (a DataError naming the column that lacks one)."""
    dtype = jnp.zeros(0).dtype
    base, classes, _ = domain_base_params(domain, dtype)
    base, _ = model.with_site_weights(base, domain.column_ids, classes)
    static = {k: domain.static_value(k) for k in model.static_inputs if k in domain.static}
    where = domain.column_ids if domain.kind == "site" else [f"{domain.name}/{c}" for c in domain.column_ids]
    return model.with_static(base, static, where)


def domain_inputs(model: ColumnModel, domain: Domain) -> tuple[Forcing, dict]:
    """(T, N) forcing and (N,) parameters (``domain_params``) of a domain."""
    return forcing_from_datasets([domain.data], dtype=jnp.zeros(0).dtype), domain_params(model, domain)


@eqx.filter_jit
def _samples_jit(model: ColumnModel, forcing, base, state0, keys, outputs, variances):
    def one(key):
        _, out = model.run(forcing, base, state0, key)
        return {k: out[k] for k in outputs} | {f"{t}_var": out[f"{t}{SIGMA_SUFFIX}"] ** 2 for t in variances}

    return jax.vmap(one)(keys)



def _sampler(model: ColumnModel, domain: Domain, outputs: Sequence[str]):
    """``keys (B,) -> {name: (B, T, N[, L])}``: rollouts with dropout on from the state spun up with
    the deterministic model (the mean network)."""
    forcing, base = domain_inputs(model, domain)
    state0 = model.spun_up_state(forcing, base, warn_for=domain.name)
    return lambda keys: _samples_jit(model, forcing, base, state0, keys, tuple(outputs), model.aleatoric_targets)


def sample_column_model(model: ColumnModel, domain: Domain, n_samples: int, key,
                        outputs: Sequence[str] = PREDICTION_OUTPUTS) -> dict[str, np.ndarray]:
    """``n_samples`` MC-dropout rollouts ``{name: (S, T, N[, L])}`` (sample s from key s of
    ``jax.random.split(key, n_samples)``, as ``predict_column_model``)."""
    out = _sampler(model, domain, outputs)(jax.random.split(key, n_samples))
    return {k: np.asarray(v) for k, v in out.items()}


def predict_column_model(model: ColumnModel, domain: Domain, outputs: Sequence[str] = PREDICTION_OUTPUTS, *,
                         key=None) -> dict[str, np.ndarray]:
    """ALMA outputs ``(T, N)`` (SoilTemp ``(T, N, L)``) over the whole domain, every column from a
    state spun up with the trained model.

    With dropout in a network: the mean of ``model.mc_samples`` MC-dropout rollouts (``key``,
    default ``MC_KEY``), plus ``<name>_sd`` and ``<name>_sd_epistemic`` (equal: no aleatoric part;
    ``neural.mc_dropout``) of Qh and Qle and of the learned parameters Kh, ra and rs (their
    uncertainty over time). A Gaussian model (``aleatoric_targets``) adds ``<target>_sd_aleatoric``
    (the root of the mean aleatoric variance over the samples) to the total ``<target>_sd``."""
    if dropout_rate(model) == 0:
        forcing, base = domain_inputs(model, domain)
        _, out = run_jit(model, forcing, base, model.spun_up_state(forcing, base, warn_for=domain.name))
        res = {k: np.asarray(out[k]) for k in outputs}
        for t in model.aleatoric_targets:  # the total is the aleatoric SD without dropout
            res[f"{t}_sd_aleatoric"] = res[f"{t}_sd"] = np.asarray(out[f"{t}{SIGMA_SUFFIX}"], np.float64)
        return res
    targets = tuple(t for t in COLUMN_TARGETS + LEARNED_PARAMETERS if t in outputs)
    per_sample = 8 * domain.n_steps * domain.n_columns * (len(outputs) + 4)  # SoilTemp has 5 values
    return mc_dropout(_sampler(model, domain, outputs), jax.random.key(MC_KEY) if key is None else key,
                      model.mc_samples, targets, mc_batch_size(model.mc_samples, per_sample))  # fmt: skip


def column_structure(model: ColumnModel) -> dict:
    """What a saved ColumnModel's skeleton needs beyond its options: the names of its offsets (a
    hybrid takes every calibrated one from the physics it starts from) and the per-site layout."""
    return {"deltas": sorted(model.deltas), "sites": list(model.sites), "site_classes": list(model.site_classes),
            "calibrated_on": list(model.calibrated_on), "time_steps": list(model.time_steps)}  # fmt: skip


def column_skeleton(model: ColumnModel, structure: dict) -> ColumnModel:
    """``model`` (as built from its options) shaped as the saved one."""
    dtype = jnp.zeros(0).dtype
    model = replace(model, deltas={k: jnp.zeros((), dtype) for k in structure["deltas"]})
    if structure["sites"]:
        model = model.per_site(structure["sites"], structure["site_classes"])
    return replace(model, calibrated_on=tuple(structure["calibrated_on"]),
                   time_steps=tuple(structure.get("time_steps", ())))  # absent: saved by an older hybridlsm


def column_provenance(model: ColumnModel, domain: Domain) -> list[str]:
    """Per column: where its physical parameters come from."""
    base, classes, notes = domain_base_params(domain)
    _, where = model.with_site_weights(base, domain.column_ids, classes)
    return [w + (f"; {n}" if n else "") for w, n in zip(where, notes)]
