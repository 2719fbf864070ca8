"""The pure ``lstm`` baseline: sequence-to-sequence Qle and Qh from meteorological forcing.

Inputs (per time step, standardised with statistics of the training sites): ``SWdown``, ``LWdown``,
``Tair``, ``Qair``, ``VPD``, ``Wind``, ``Precip``, ``Psurf`` and the hour of day (sin, cos of the
interval centre in local standard time). Targets are standardised too, so Qle and Qh weigh equally
in the loss, and the outputs are transformed back to W m-2.

Training uses windows of ``spinup_days + window_days`` cut from every training record with stride
``window_days``; the first ``spinup_days`` of a window only warm the LSTM state (no loss). The
validation loss runs over each whole validation record (after its first ``spinup_days``), exactly
as :meth:`LSTMModel.predict` does. Targets count where observed and their QC flag is
``<= data.max_qc``; a dataset may add a boolean ``loss_mask`` variable on ``time`` to restrict
further which steps count (e.g. a split mask).

With ``dropout`` > 0 (seed 000: 0.15) the prediction is the mean of ``mc_samples`` passes with
dropout on, and each target gets ``<target>_sd`` (MC dropout, ``neural.mc_dropout``).

With ``likelihood: gaussian`` the network has a heteroscedastic Gaussian head
(:class:`~hybridlsm.neural.GaussianHead`: a mean and an SD per target, in standardised units, the SD
in ````neural.TARGET_STD_RANGE````) trained with the masked Gaussian negative
log-likelihood (training and validation loss). The prediction then also gives
``<target>_sd_aleatoric`` (the head's SD in W m-2) and ``<target>_sd``, the total SD: with dropout
the law of total variance over the MC-dropout passes (``neural.mc_dropout``), without it the
aleatoric SD.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from pydantic import BaseModel, Field, field_validator

from hybridlsm import thermo
from hybridlsm.config import ALLOWED_TARGETS, OPTIONS_CONFIG, Seed
from hybridlsm.data.schema import DataError, site_label
from hybridlsm.data.splits import loss_steps, usable_targets
from hybridlsm.domain import Domain
from hybridlsm.models.registry import (
    NEEDS_DROPOUT,
    EquinoxSpec,
    TrainingContext,
    check_time_step,
    register_model,
    training_time_steps,
)
from hybridlsm.neural import LSTM, MC_KEY, MC_SAMPLES, TARGET_STD_RANGE, GaussianHead, Normaliser, mc_batch_size, mc_dropout
from hybridlsm.training.losses import gaussian_nll, masked_mse
from hybridlsm.training.trainer import fit

if TYPE_CHECKING:  # pragma: no cover
    import xarray as xr


__all__ = ["DEFAULT_INPUTS", "LSTMBaseline", "LSTMModel", "LSTMOptions", "dataset_features"]

DEFAULT_INPUTS = ("SWdown", "LWdown", "Tair", "Qair", "VPD", "Wind", "Precip", "Psurf")
ALLOWED_INPUTS = DEFAULT_INPUTS + ("RH", "CO2air", "LAI")


def gaussian_head(n_targets: int) -> GaussianHead:
    """The heteroscedastic head of ``likelihood: gaussian`` (SD bounds in standardised units)."""
    return GaussianHead(n_targets, *TARGET_STD_RANGE)


class LSTMOptions(BaseModel):
    """``options`` of ``{name: lstm}`` in a config."""

    model_config = OPTIONS_CONFIG

    hidden_size: int = Field(64, ge=1, le=4096)
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout rate, in training and at prediction "
                           "(MC dropout; seed 000: 0.15); 0: deterministic")
    mc_samples: int = Field(MC_SAMPLES, ge=2, le=1000, description="MC-dropout passes of a prediction (with dropout)")
    forget_bias: float = 1.0
    inputs: list[Literal[ALLOWED_INPUTS]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: list(DEFAULT_INPUTS), min_length=1
    )
    hour_features: bool = True
    targets: list[Literal[ALLOWED_TARGETS]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: ["Qle", "Qh"], min_length=1
    )
    seed: Seed = Field(0, description="initialisation seed of the network weights")
    likelihood: Literal["mse", "gaussian"] = Field(
        "mse", description="mse: point prediction trained on the mean square error; gaussian: a mean and an "
        "aleatoric SD per target, trained on the Gaussian negative log-likelihood")

    @field_validator("inputs", "targets")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        dup = sorted({v for v in value if value.count(v) > 1})
        if dup:
            raise ValueError(f"duplicate entries {dup}")
        return value


class LSTMBaseline(eqx.Module):
    """The network plus the names and target statistics it needs (``predict`` uses only this)."""

    net: LSTM
    target_norm: Normaliser
    inputs: tuple[str, ...] = eqx.field(static=True)
    targets: tuple[str, ...] = eqx.field(static=True)
    hour_features: bool = eqx.field(static=True)
    mc_samples: int = eqx.field(static=True, default=MC_SAMPLES)
    #: the heteroscedastic head (``likelihood: gaussian``); None: point predictions
    head: GaussianHead | None = None
    #: the time steps [s] of the training data (the memory is learned at them; ``check_time_step``)
    time_steps: tuple[float, ...] = eqx.field(static=True, default=())

    def __call__(self, x: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
        """Standardised targets ``(T, [N,] K)`` from raw features ``(T, [N,] F)`` (with a Gaussian
        head the raw ``(T, [N,] 2K)`` outputs of :meth:`moments`)."""
        return self.net(x, key=key)

    def moments(self, x: jax.Array, *, key: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """Standardised mean and SD ``(T, [N,] K)`` of the Gaussian head."""
        return self.head(self.net(x, key=key))

    def physical_moments(self, x: jax.Array, *, key: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """Mean and variance in target units (W m-2, (W m-2)^2): the standardisation undone."""
        mean, std = self.moments(x, key=key)
        scale = jax.lax.stop_gradient(self.target_norm.std)
        return self.target_norm.inverse(mean), (std * scale) ** 2

    @property
    def dtype(self) -> Any:
        return self.net.head.weight.dtype


# ------------------------------------------------------------------------------ data access


_site = site_label


def _time_step_s(ds: "xr.Dataset") -> float:
    if "time_step_s" in ds.attrs:
        return float(ds.attrs["time_step_s"])
    t = ds["time"].values
    if t.size < 2:
        raise ValueError(f"{_site(ds)}: cannot infer the time step (attrs['time_step_s'] missing, < 2 steps)")
    return float(np.median(np.diff(t)) / np.timedelta64(1, "s"))


def _series(ds: "xr.Dataset", name: str) -> np.ndarray | None:
    if name not in ds:
        return None
    da = ds[name]
    if da.dims != ("time",):
        raise ValueError(f"{_site(ds)}: variable {name} has dims {da.dims}; the lstm baseline needs ('time',)")
    return np.asarray(da.values, dtype=np.float64)


def _input_series(ds: "xr.Dataset", name: str) -> np.ndarray:
    values = _series(ds, name)
    if values is not None:
        return values
    t, p = _series(ds, "Tair"), _series(ds, "Psurf")
    if name == "Qair" and t is not None and p is not None and "VPD" in ds:
        return thermo.specific_humidity_from_vpd(t, 100.0 * _series(ds, "VPD"), p)
    if name == "VPD" and t is not None and p is not None and "Qair" in ds:
        e = thermo.vapour_pressure_from_specific_humidity(_series(ds, "Qair"), p)
        return (thermo.saturation_vapour_pressure(t) - e) / 100.0
    hint = " (or VPD, Tair and Psurf)" if name == "Qair" else " (or Qair, Tair and Psurf)" if name == "VPD" else ""
    raise ValueError(f"{_site(ds)}: input variable {name}{hint} is not in the dataset; "
                     f"present: {sorted(str(v) for v in ds.data_vars)}")  # fmt: skip


def dataset_features(ds: "xr.Dataset", inputs: Sequence[str], hour_features: bool = True) -> np.ndarray:
    """``(T, F)`` raw input features: ``inputs`` in order, then sin/cos of the hour of day."""
    cols = [_input_series(ds, name) for name in inputs]
    if hour_features:
        t = ds["time"].values.astype("datetime64[ns]")
        seconds = (t - t.astype("datetime64[D]")) / np.timedelta64(1, "s") + 0.5 * _time_step_s(ds)
        angle = 2.0 * math.pi * seconds / 86400.0
        cols += [np.sin(angle), np.cos(angle)]
    return np.stack(cols, axis=-1)


# --------------------------------------------------------------------------------- windows


def _make_windows(
    model: LSTMBaseline, datasets: Sequence["xr.Dataset"], ctx: TrainingContext
) -> dict[int, dict[str, np.ndarray]]:
    """Windows grouped by length (steps): ``{L: {"x": (W, L, F), "y": (W, L, K), "m": (W, L, K)}}``.

    Windows come from :func:`hybridlsm.data.training_windows` over the steps where ``loss_mask``
    is true (all steps without one); the loss counts where, in addition, the target is usable.
    """
    from hybridlsm.data import TRAIN, UNUSED, training_windows

    groups: dict[int, dict[str, list[np.ndarray]]] = {}
    for ds in datasets:
        dt = _time_step_s(ds)
        spin = ctx.steps(ctx.spinup_days, dt)
        win = max(1, ctx.steps(ctx.window_days, dt))
        windows = training_windows(np.where(loss_steps(ds), TRAIN, UNUSED), win, spin)
        if len(windows) == 0:
            warnings.warn(
                f"{_site(ds)}: no training window of {spin} spin-up + {win} steps fits its "
                f"{ds.sizes['time']} steps; the dataset is not used",
                stacklevel=3,
            )
            continue
        x = _fill_inputs(model, dataset_features(ds, model.inputs, model.hour_features), _site(ds))
        y, m = usable_targets(ds, model.targets, ctx.max_qc)
        y = np.where(m, (y - np.asarray(model.target_norm.mean)) / np.asarray(model.target_norm.std), 0.0)
        g = groups.setdefault(spin + win, {"x": [], "y": [], "m": []})
        g["x"].append(x[windows.index])
        g["y"].append(y[windows.index])
        g["m"].append(m[windows.index] & windows.loss_mask[:, :, None])
    return {k: {n: np.concatenate(v) for n, v in g.items()} for k, g in groups.items()}


def _fill_inputs(model: LSTMBaseline, x: np.ndarray, site: str) -> np.ndarray:
    """Replace missing inputs by the training mean (a standardised 0), with a warning."""
    bad = ~np.isfinite(x)
    if bad.any():
        mean = np.asarray(model.net.normaliser.mean)
        warnings.warn(
            f"{site}: {int(bad.any(axis=1).sum())} time steps with missing lstm inputs were filled with "
            "the training mean (forcing should be gap-filled by preprocessing)",
            stacklevel=3,
        )
        x = np.where(bad, mean, x)
    return x


def _batches(groups: dict[int, dict[str, np.ndarray]], batch_size: int, dtype: Any):
    """``key -> list of time-major batches``; a short last batch is padded with fully masked windows."""

    def make(key: jax.Array) -> Iterator[dict[str, jax.Array]]:
        out = []
        keys = jax.random.split(key, len(groups) + 1)
        for k, (_, g) in zip(keys[1:], sorted(groups.items())):
            n = g["x"].shape[0]
            order = np.asarray(jax.random.permutation(k, n))
            for i in range(0, n, batch_size):
                idx = order[i : i + batch_size]
                valid = np.ones(batch_size, dtype=bool)
                if idx.size < batch_size:
                    valid[idx.size :] = False
                    idx = np.concatenate([idx, np.resize(order, batch_size - idx.size)])
                m = g["m"][idx] & valid[:, None, None]
                out.append({
                    "x": jnp.asarray(np.swapaxes(g["x"][idx], 0, 1), dtype=dtype),
                    "y": jnp.asarray(np.swapaxes(g["y"][idx], 0, 1), dtype=dtype),
                    "m": jnp.asarray(np.swapaxes(m, 0, 1)),
                })  # fmt: skip
        # Interleave groups deterministically by shuffling the list order too.
        perm = np.asarray(jax.random.permutation(keys[0], len(out))) if len(groups) > 1 else range(len(out))
        return iter([out[int(i)] for i in perm])

    return make


def lstm_loss(model: LSTMBaseline, batch: dict[str, jax.Array], key: jax.Array, weights: dict) -> tuple:
    """Masked MSE of the standardised targets, or with a Gaussian head their masked Gaussian negative
    log-likelihood (no physics terms: ``weights`` are unused)."""
    if model.head is not None:
        mean, std = model.moments(batch["x"], key=key)
        nll = gaussian_nll(mean, std, batch["y"], batch["m"])
        return nll, {"nll": nll}
    pred = model(batch["x"], key=key)
    mse = masked_mse(pred, batch["y"], batch["m"])
    return mse, {"mse": mse}


@eqx.filter_jit
def _sse(model: LSTMBaseline, x: jax.Array, y: jax.Array, m: jax.Array) -> tuple[jax.Array, jax.Array]:
    err = jnp.where(m, model(x) - y, 0.0)
    return jnp.sum(err * err), jnp.sum(m)


@eqx.filter_jit
def _nll_sum(model: LSTMBaseline, x: jax.Array, y: jax.Array, m: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Sum and count of the Gaussian negative log-likelihood where ``m`` (standardised units)."""
    n = jnp.sum(m)
    return gaussian_nll(*model.moments(x), y, m) * jnp.maximum(n, 1), n


@eqx.filter_jit
def _forward(model: LSTMBaseline, x: jax.Array) -> jax.Array:
    return model(x)


@eqx.filter_jit
def _sample(model: LSTMBaseline, x: jax.Array, keys: jax.Array) -> jax.Array:
    return jax.vmap(lambda key: model.target_norm.inverse(model(x, key=key)))(keys)


@eqx.filter_jit
def _physical_moments(model: LSTMBaseline, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return model.physical_moments(x)


@eqx.filter_jit
def _sample_moments(model: LSTMBaseline, x: jax.Array, keys: jax.Array) -> tuple[jax.Array, jax.Array]:
    return jax.vmap(lambda key: model.physical_moments(x, key=key))(keys)


# ----------------------------------------------------------------------------------- model


@register_model("lstm")
class LSTMModel(EquinoxSpec):
    """Registry entry ``lstm`` (see :class:`~hybridlsm.models.registry.ModelSpec`)."""

    Options = LSTMOptions
    targets = ALLOWED_TARGETS

    def unused_options(self, options: LSTMOptions) -> dict[str, str]:
        if options.dropout == 0:
            return {"mc_samples": NEEDS_DROPOUT}
        return {}

    def build(self, options: LSTMOptions) -> LSTMBaseline:
        """The untrained network with identity statistics (``train`` sets them from the data)."""
        n_in = len(options.inputs) + (2 if options.hour_features else 0)
        k = len(options.targets)
        head = gaussian_head(k) if options.likelihood == "gaussian" else None
        net = LSTM(in_size=n_in, out_size=k if head is None else head.raw_size, hidden_size=options.hidden_size,
                   dropout=options.dropout, forget_bias=options.forget_bias, key=jax.random.key(options.seed))  # fmt: skip
        dtype = net.head.weight.dtype
        if head is not None:  # the SD starts near 1 (the targets' SD), whatever the weights
            bias = net.head.bias.at[k:].set(head.raw_for_std(1.0))
            net = eqx.tree_at(lambda n: (n.head.weight, n.head.bias), net,
                              (net.head.weight.at[k:].multiply(0.1), bias))
        return LSTMBaseline(net=net, target_norm=Normaliser.identity(k, dtype=dtype),
                            inputs=tuple(options.inputs), targets=tuple(options.targets),
                            hour_features=options.hour_features, mc_samples=options.mc_samples, head=head)  # fmt: skip

    def with_statistics(self, model: LSTMBaseline, datasets: Sequence["xr.Dataset"]) -> LSTMBaseline:
        """Input and target statistics from the loss steps of the training columns (no leakage)."""
        feats = np.concatenate([
            dataset_features(ds, model.inputs, model.hour_features)[loss_steps(ds)] for ds in datasets
        ])  # fmt: skip
        in_norm = Normaliser.from_data(feats)
        ys = []
        for ds in datasets:
            y, m = usable_targets(ds, model.targets, max_qc=3)
            ys.append(np.where(m, y, np.nan))
        y_all = np.concatenate(ys)
        empty = [t for t, ok in zip(model.targets, np.isfinite(y_all).any(axis=0)) if not ok]
        if empty:
            raise ValueError(f"lstm: no observed values of target(s) {empty} in the training data")
        out_norm = Normaliser.from_data(y_all)
        dtype = model.dtype
        return eqx.tree_at(lambda m: (m.net.normaliser, m.target_norm), model,
                           (Normaliser(in_norm.mean, in_norm.std, dtype=dtype),
                            Normaliser(out_norm.mean, out_norm.std, dtype=dtype)))  # fmt: skip

    def train(self, model: LSTMBaseline, options: LSTMOptions, train: Sequence[Domain], val: Sequence[Domain],
              ctx: TrainingContext) -> LSTMBaseline:
        """Fit with :func:`~hybridlsm.training.trainer.fit`; resumes from the context's checkpoints."""
        train_data = [ds for d in train for ds in d.columns()]
        model = replace(self.with_statistics(model, train_data), time_steps=training_time_steps(train))
        groups = _make_windows(model, train_data, ctx)
        if not groups:
            raise DataError(f"lstm: no training window of data.spinup_days + data.window_days "
                            f"({ctx.spinup_days:g} + {ctx.window_days:g} d) fits any training record; shorten "
                            "data.window_days")  # fmt: skip
        if not any(g["m"].any() for g in groups.values()):
            raise DataError("lstm: no usable target value in the training windows (check data.max_qc, data.split "
                            "and data.window_days)")
        val_sets = []
        for ds in (ds for d in val for ds in d.columns()):
            spin = ctx.steps(ctx.spinup_days, _time_step_s(ds))
            x = _fill_inputs(model, dataset_features(ds, model.inputs, model.hour_features), _site(ds))
            y, m = usable_targets(ds, model.targets, ctx.max_qc)
            y = np.where(m, (y - np.asarray(model.target_norm.mean)) / np.asarray(model.target_norm.std), 0.0)
            m[: min(spin, m.shape[0] - 1)] = False
            val_sets.append(tuple(jnp.asarray(a, dtype=model.dtype) for a in (x, y)) + (jnp.asarray(m),))
        if not any(bool(v[2].any()) for v in val_sets):
            raise ValueError("lstm.train: no usable target value in the validation data (check QC and split)")

        val_sum = _sse if model.head is None else _nll_sum  # the training loss, over the validation data

        def val_fn(m: LSTMBaseline) -> float:
            sse = n = 0.0
            for x, y, mask in val_sets:
                s, c = val_sum(m, x, y, mask)
                sse, n = sse + float(s), n + float(c)
            return sse / n

        # one device: its batches are not split over a mesh (training.devices splits the column models')
        result = fit(model, lstm_loss, _batches(groups, ctx.training.batch_windows, model.dtype), val_fn,
                     ctx.training.model_copy(update={"devices": 1}), checkpoint_dir=ctx.checkpoint_dir, progress=ctx.progress,
                     resume=ctx.checkpoint_dir is not None)  # fmt: skip
        return result.model

    def structure(self, model: LSTMBaseline) -> dict:
        return {"time_steps": list(model.time_steps)}

    def skeleton(self, options: LSTMOptions, structure: dict) -> LSTMBaseline:
        return replace(self.build(options), time_steps=tuple(structure.get("time_steps", ())))

    def learns_time_step(self, options: LSTMOptions) -> bool:
        return True

    def check_domain(self, model: LSTMBaseline, domain: Domain) -> None:
        check_time_step(self.name, model.time_steps, domain)

    def predict(self, model: LSTMBaseline, domain: Domain, *, key: jax.Array | None = None) -> dict[str, np.ndarray]:
        """``{target: (T, N) W m-2}`` over the whole domain (one sequence per column from a zero state);
        with dropout the mean of ``mc_samples`` MC-dropout passes and ``<target>_sd``; with a Gaussian
        head also ``<target>_sd_aleatoric`` (module docstring). A domain at a time step the model was
        not trained at is refused (``check_time_step``)."""
        self.check_domain(model, domain)
        x = np.stack([_fill_inputs(model, dataset_features(ds, model.inputs, model.hour_features), _site(ds))
                      for ds in domain.columns()], axis=1)  # fmt: skip
        x = jnp.asarray(x, dtype=model.dtype)
        if model.head is not None:
            return self._predict_gaussian(model, x, key)
        if model.net.dropout == 0:
            y = np.asarray(model.target_norm.inverse(_forward(model, x)), dtype=np.float64)
            return {name: y[..., k] for k, name in enumerate(model.targets)}

        def sample(keys):
            y = _sample(model, x, keys)
            return {name: y[..., k] for k, name in enumerate(model.targets)}

        batch = mc_batch_size(model.mc_samples, 8 * x.shape[0] * x.shape[1] * len(model.targets))
        key = jax.random.key(MC_KEY) if key is None else key
        return mc_dropout(sample, key, model.mc_samples, model.targets, batch)

    def _predict_gaussian(self, model: LSTMBaseline, x: jax.Array, key: jax.Array | None) -> dict[str, np.ndarray]:
        if model.net.dropout == 0:
            mean, var = (np.asarray(a, dtype=np.float64) for a in _physical_moments(model, x))
            out = {}
            for k, name in enumerate(model.targets):
                sd = np.sqrt(var[..., k])
                out |= {name: mean[..., k], f"{name}_sd": sd, f"{name}_sd_aleatoric": sd}
            return out

        def sample(keys):
            mean, var = _sample_moments(model, x, keys)
            return {n: a[..., k] for k, name in enumerate(model.targets)
                    for n, a in ((name, mean), (f"{name}_var", var))}  # fmt: skip

        batch = mc_batch_size(model.mc_samples, 16 * x.shape[0] * x.shape[1] * len(model.targets))
        key = jax.random.key(MC_KEY) if key is None else key
        return mc_dropout(sample, key, model.mc_samples, model.targets, batch)

    def required_inputs(self, options: LSTMOptions) -> tuple[str, ...]:
        return tuple(options.inputs)
