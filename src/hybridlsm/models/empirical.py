"""PLUMBER empirical benchmarks (docs/physics-reference §6) and a gradient-boosting baseline.

Each model predicts one flux (``target``, e.g. ``"Qle"`` or ``"Qh"``) from the meteorological forcing
of the same time step; fit one instance per flux. Training data are pooled over the datasets passed
to `fit` (for the PLUMBER protocol: all sites but the test site) and restricted to rows where the
target and every input are finite and the caller's mask (e.g. QC == 0) is True.

- ``1lin``: flux = a + b·SWdown (OLS).
- ``2lin``: flux = a + b₁·SWdown + b₂·Tair (OLS).
- ``3km27``: inputs (SWdown, Tair, RH) z-scored with the training mean and SD; k-means with k = 27
  (sklearn ``KMeans``, n_init = 3, max_iter = 50 as R's ``iter.max``, fixed seed) on the z-scores;
  one OLS of the flux on the *unstandardised* inputs per cluster; a prediction applies the
  regression of the nearest centroid (piecewise-linear model).
- ``gbm``: sklearn ``HistGradientBoostingRegressor`` (fixed seed) on the forcing (SWdown, Tair, RH,
  VPD, Wind, Qair, Precip), time features (hour of day and day of year as sin/cos) and antecedent
  rain (precipitation in mm summed over the 1, 7 and 30 days ending with the current step; NaN
  until a full window is available, which the regressor treats as missing).

Inputs use canonical names and units (SWdown W m-2, Tair K, RH %, Precip kg m-2 s-1, VPD hPa,
Wind m s-1, Qair kg kg-1). Predictions are NaN where a required input is not finite (linear and
cluster models); the gbm handles missing inputs natively.
"""

from __future__ import annotations

import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import xarray as xr

from pydantic import BaseModel, Field

from hybridlsm.config import ALLOWED_TARGETS, OPTIONS_CONFIG
from hybridlsm.data.schema import DataError, DataWarning
from hybridlsm.data.splits import usable_targets
from hybridlsm.domain import Domain
from hybridlsm.models.registry import (ModelSpec, SavedModelError, TrainingContext, read_model_json, register_model,
                                       write_model_json)
from hybridlsm.rundir import atomic_write

__all__ = [
    "EmpiricalInputError",
    "EmpiricalModel",
    "OneLin",
    "TwoLin",
    "KMeansRegression",
    "GradientBoosting",
    "EMPIRICAL_MODELS",
    "time_features",
    "antecedent_precip",
]


class EmpiricalInputError(DataError):
    """A dataset lacks a variable an empirical model needs, or holds no usable training rows
    (a `hybridlsm.data.DataError`, hence a ValueError)."""


def _site(ds: xr.Dataset) -> str:
    return str(ds.attrs.get("site_id", "<no site_id>"))


def _variable(ds: xr.Dataset, name: str, model: str) -> np.ndarray:
    if name not in ds.variables:
        have = ", ".join(sorted(str(v) for v in ds.data_vars))
        raise EmpiricalInputError(
            f"{model}: site {_site(ds)}: input variable {name!r} is missing (dataset has: {have})"
        )
    x = np.asarray(ds[name].values, dtype=float)
    if x.ndim != 1:
        raise EmpiricalInputError(
            f"{model}: site {_site(ds)}: variable {name!r} must be 1-D on time, has dims {ds[name].dims}"
        )
    return x


def _time_step_s(ds: xr.Dataset) -> float:
    if "time_step_s" in ds.attrs:
        return float(ds.attrs["time_step_s"])
    t = np.asarray(ds["time"].values, dtype="datetime64[ns]")
    if t.size < 2:
        raise EmpiricalInputError(f"site {_site(ds)}: no attrs['time_step_s'] and fewer than 2 times")
    return float(np.median(np.diff(t).astype(np.int64)) / 1e9)


def time_features(ds: xr.Dataset) -> np.ndarray:
    """(T, 4): sin, cos of the hour of day and sin, cos of the day of year at the interval midpoint.

    ``time`` is the interval start in local standard time (architecture §1).
    """
    if "time" not in ds.coords and "time" not in ds.variables:
        raise EmpiricalInputError(f"site {_site(ds)}: no 'time' coordinate")
    t = np.asarray(ds["time"].values, dtype="datetime64[ns]")
    mid = t + np.timedelta64(int(_time_step_s(ds) * 5e8), "ns")  # + half a step
    day = mid.astype("datetime64[D]")
    hour = (mid - day).astype(np.int64) / 3.6e12
    year = mid.astype("datetime64[Y]")
    doy = (day - year.astype("datetime64[D]")).astype(np.int64) + hour / 24.0  # 0-based, fractional
    h = 2 * np.pi * hour / 24.0
    d = 2 * np.pi * doy / 365.25
    return np.column_stack([np.sin(h), np.cos(h), np.sin(d), np.cos(d)])


def antecedent_precip(ds: xr.Dataset, days: Sequence[float] = (1, 7, 30)) -> np.ndarray:
    """(T, len(days)): precipitation [mm] summed over the ``days`` ending with (and including) each
    step; NaN until the window is complete or where it holds a missing value."""
    p = _variable(ds, "Precip", "antecedent_precip")
    dt = _time_step_s(ds)
    mm = p * dt  # kg m-2 s-1 × s = mm per step
    csum = np.concatenate([[0.0], np.cumsum(np.where(np.isfinite(mm), mm, 0.0))])
    cbad = np.concatenate([[0], np.cumsum(~np.isfinite(mm))])
    out = np.full((p.size, len(days)), np.nan)
    idx = np.arange(1, p.size + 1)
    for j, d in enumerate(days):
        w = int(round(d * 86400.0 / dt))
        ok = idx >= w
        lo = np.where(ok, idx - w, 0)
        s = csum[idx] - csum[lo]
        nbad = cbad[idx] - cbad[lo]
        out[:, j] = np.where(ok & (nbad == 0), s, np.nan)
    return out


class EmpiricalModel:
    """Base class: ``fit(datasets, target, mask)`` pools the rows, ``predict(ds)`` returns (T,)."""

    name: ClassVar[str] = ""
    inputs: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.target: str | None = None
        self.n_train: int = 0

    # -- features --------------------------------------------------------------------------
    def features(self, ds: xr.Dataset) -> np.ndarray:
        """(T, F) design matrix of the model's inputs for one dataset."""
        return np.column_stack([_variable(ds, v, self.name) for v in self.inputs])

    def _rows_required_finite(self, X: np.ndarray) -> np.ndarray:
        return np.all(np.isfinite(X), axis=1)

    # -- fit / predict ---------------------------------------------------------------------
    def fit(
        self,
        datasets: Sequence[xr.Dataset],
        target: str,
        mask: Sequence[np.ndarray] | None = None,
    ) -> EmpiricalModel:
        """Fit on the pooled rows of ``datasets`` where ``target`` and the inputs are finite and
        ``mask[i]`` (bool, one array of length T_i per dataset; e.g. QC == 0) is True."""
        if isinstance(datasets, xr.Dataset):
            datasets = [datasets]
        if not datasets:
            raise EmpiricalInputError(f"{self.name}: no training datasets")
        if mask is not None and len(mask) != len(datasets):
            raise EmpiricalInputError(
                f"{self.name}: {len(mask)} masks for {len(datasets)} datasets"
            )
        Xs, ys = [], []
        for i, ds in enumerate(datasets):
            if target not in ds.variables:
                raise EmpiricalInputError(
                    f"{self.name}: site {_site(ds)}: target variable {target!r} is missing"
                )
            y = _variable(ds, target, self.name)
            X = self.features(ds)
            ok = np.isfinite(y) & self._rows_required_finite(X)
            if mask is not None:
                m = np.asarray(mask[i])
                if m.dtype != bool or m.shape != y.shape:
                    raise EmpiricalInputError(
                        f"{self.name}: site {_site(ds)}: mask must be a bool array of shape {y.shape}, "
                        f"got {m.dtype} {m.shape}"
                    )
                ok &= m
            Xs.append(X[ok])
            ys.append(y[ok])
        X = np.concatenate(Xs)
        y = np.concatenate(ys)
        sites = ", ".join(_site(d) for d in datasets)
        if y.size < self.min_rows():
            raise EmpiricalInputError(
                f"{self.name}: only {y.size} usable training rows for {target!r} at sites {sites} "
                f"(need at least {self.min_rows()})"
            )
        self.target = target
        self.n_train = int(y.size)
        self._fit(X, y)
        return self

    def predict(self, ds: xr.Dataset) -> np.ndarray:
        """Predicted ``target`` [W m-2] on the time axis of ``ds`` (1-D, length T)."""
        if self.target is None:
            raise RuntimeError(f"{self.name}: predict called before fit")
        X = self.features(ds)
        out = np.full(X.shape[0], np.nan)
        ok = self._rows_required_finite(X)
        if not ok.all():  # never silent: the steps without a prediction are not scored
            lacking = [v for v in self.inputs if not np.isfinite(_variable(ds, v, self.name)).all()]
            warnings.warn(f"{self.name} ({self.target}): site {_site(ds)}: {int((~ok).sum())} of {ok.size} steps "
                          f"lack an input ({', '.join(lacking)}); no prediction there", DataWarning, stacklevel=3)
        if ok.any():
            out[ok] = self._predict(X[ok])
        return out

    def min_rows(self) -> int:
        return len(self.inputs) + 1

    # -- persistence (no pickle: arrays as .npz, scikit-learn estimators with skops) ------------
    # scikit-learn and skops are imported where they are used: skops's import enumerates every
    # scikit-learn estimator (1.7-3 s), which every ``hybridlsm`` command would pay at start-up
    #: fitted NumPy attributes saved as arrays; the scikit-learn estimator attribute, if any
    fitted_arrays: ClassVar[tuple[str, ...]] = ()
    estimator_attr: ClassVar[str | None] = None

    def save(self, directory: Path, prefix: str) -> dict[str, str]:
        """Write the fitted state as ``<prefix>.npz`` (+ ``<prefix>.skops``); their SHA-256 by name."""
        if self.target is None:
            raise RuntimeError(f"{self.name}: save called before fit")
        arrays = {k: np.asarray(getattr(self, k)) for k in self.fitted_arrays}
        arrays["n_train"] = np.asarray(self.n_train)

        def savez(path: Path) -> None:
            with open(path, "wb") as f:  # a file object: np.savez would append .npz to the temporary name
                np.savez(f, **arrays)

        digests = {f"{prefix}.npz": atomic_write(Path(directory) / f"{prefix}.npz", savez)}
        if self.estimator_attr is not None:
            import skops.io as sio

            est = getattr(self, self.estimator_attr)
            digests[f"{prefix}.skops"] = atomic_write(Path(directory) / f"{prefix}.skops", lambda p: sio.dump(est, p))
        return digests

    def restore(self, directory: Path, prefix: str, target: str) -> EmpiricalModel:
        """Load the state ``save`` wrote; scikit-learn types only are trusted in the skops file."""
        path = Path(directory) / f"{prefix}.npz"
        with np.load(path, allow_pickle=False) as data:
            for k in self.fitted_arrays:
                setattr(self, k, data[k])
            self.n_train = int(data["n_train"])
        if self.estimator_attr is not None:
            import skops.io as sio

            est_path = Path(directory) / f"{prefix}.skops"
            untrusted = sio.get_untrusted_types(file=est_path)
            foreign = [t for t in untrusted if not t.startswith("sklearn.")]
            if foreign:
                raise EmpiricalInputError(f"{est_path}: refuses to load non-scikit-learn types {foreign}")
            setattr(self, self.estimator_attr, sio.load(est_path, trusted=untrusted))
        self.target = target
        return self

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _predict(self, X: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


def _ols(X: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """OLS y = a + X·b, solved in centred form (least-norm b for collinear or constant columns)."""
    xm, ym = X.mean(axis=0), y.mean()
    b, *_ = np.linalg.lstsq(X - xm, y - ym, rcond=None)
    return float(ym - xm @ b), b


class _LinearModel(EmpiricalModel):
    fitted_arrays = ("intercept_", "coef_")

    def _fit(self, X, y):
        self.intercept_, self.coef_ = _ols(X, y)

    def _predict(self, X):
        return self.intercept_ + X @ self.coef_


class OneLin(_LinearModel):
    """PLUMBER ``1lin``: flux = a + b·SWdown (OLS). Fitted: ``intercept_``, ``coef_`` = [b]."""

    name = "1lin"
    inputs = ("SWdown",)


class TwoLin(_LinearModel):
    """PLUMBER ``2lin``: flux = a + b₁·SWdown + b₂·Tair (OLS). ``coef_`` = [b₁, b₂]."""

    name = "2lin"
    inputs = ("SWdown", "Tair")


class KMeansRegression(EmpiricalModel):
    """PLUMBER ``3km27``: k-means (k = 27) on z-scored (SWdown, Tair, RH), one OLS per cluster on
    the unstandardised inputs, prediction by the nearest centroid's regression.

    Fitted: ``mean_``, ``scale_`` (training mean and population SD of the inputs), ``kmeans_``,
    ``intercepts_`` (k,), ``coefs_`` (k, 3). A cluster's OLS is least-norm in centred form, so an
    input constant within a cluster (SWdown = 0 at night) gets a zero slope.
    """

    name = "3km27"
    inputs = ("SWdown", "Tair", "RH")
    fitted_arrays = ("mean_", "scale_", "intercepts_", "coefs_")
    estimator_attr = "kmeans_"

    def __init__(self, n_clusters: int = 27, seed: int = 0, n_init: int = 3, max_iter: int = 50) -> None:
        super().__init__()
        self.n_clusters = n_clusters
        self.seed = seed
        self.n_init = n_init
        self.max_iter = max_iter

    def min_rows(self) -> int:
        return self.n_clusters

    def _fit(self, X, y):
        self.mean_ = X.mean(axis=0)
        sd = X.std(axis=0)
        self.scale_ = np.where(sd > 0, sd, 1.0)
        Z = (X - self.mean_) / self.scale_
        from sklearn.cluster import KMeans

        self.kmeans_ = KMeans(
            n_clusters=self.n_clusters, n_init=self.n_init, max_iter=self.max_iter, random_state=self.seed
        ).fit(Z)
        labels = self.kmeans_.labels_
        k = self.n_clusters
        self.intercepts_ = np.zeros(k)
        self.coefs_ = np.zeros((k, X.shape[1]))
        for c in range(k):
            sel = labels == c
            if sel.any():
                self.intercepts_[c], self.coefs_[c] = _ols(X[sel], y[sel])

    def _predict(self, X):
        labels = self.kmeans_.predict((X - self.mean_) / self.scale_)
        return self.intercepts_[labels] + np.einsum("ij,ij->i", X, self.coefs_[labels])


class GradientBoosting(EmpiricalModel):
    """``gbm``: HistGradientBoostingRegressor on forcing + time features + antecedent rain.

    Feature columns (``feature_names``): the ``inputs`` forcing, ``hour_sin, hour_cos, doy_sin,
    doy_cos``, ``precip_<d>d`` for d in ``rain_days``. Fixed seed; no early stopping (deterministic,
    no random validation split).
    """

    name = "gbm"
    estimator_attr = "regressor_"
    fitted_arrays = ("unused_features_",)
    default_inputs: ClassVar[tuple[str, ...]] = ("SWdown", "Tair", "RH", "VPD", "Wind", "Qair", "Precip")

    def __init__(
        self,
        inputs: Sequence[str] | None = None,
        rain_days: Sequence[float] = (1, 7, 30),
        max_iter: int = 200,
        learning_rate: float = 0.1,
        max_leaf_nodes: int = 31,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.inputs = tuple(inputs) if inputs is not None else self.default_inputs
        self.rain_days = tuple(rain_days)
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        self.max_leaf_nodes = max_leaf_nodes
        self.seed = seed

    @property
    def feature_names(self) -> list[str]:
        return [
            *self.inputs,
            "hour_sin",
            "hour_cos",
            "doy_sin",
            "doy_cos",
            *(f"precip_{d:g}d" for d in self.rain_days),
        ]

    def features(self, ds: xr.Dataset) -> np.ndarray:
        forcing = super().features(ds)
        parts = [forcing, time_features(ds)]
        if self.rain_days:
            parts.append(antecedent_precip(ds, self.rain_days))
        return np.column_stack(parts)

    def _rows_required_finite(self, X):
        # HistGradientBoosting handles missing values; only the current forcing must be present.
        return np.all(np.isfinite(X[:, : len(self.inputs)]), axis=1)

    def min_rows(self) -> int:
        return 2

    def _fit(self, X, y):
        # a feature with no value in the training rows (a 30-day rain sum on a shorter record)
        # cannot inform a split, and scikit-learn refuses an all-missing column: it is held at 0
        self.unused_features_ = ~np.isfinite(X).any(axis=0)
        if self.unused_features_.any():
            names = [n for n, u in zip(self.feature_names, self.unused_features_) if u]
            warnings.warn(f"gbm ({self.target}): feature(s) {names} have no value in the training rows and "
                          "are not used", DataWarning, stacklevel=3)  # fmt: skip
        from sklearn.ensemble import HistGradientBoostingRegressor

        self.regressor_ = HistGradientBoostingRegressor(
            max_iter=self.max_iter,
            learning_rate=self.learning_rate,
            max_leaf_nodes=self.max_leaf_nodes,
            early_stopping=False,
            random_state=self.seed,
        ).fit(np.where(self.unused_features_, 0.0, X), y)

    def _predict(self, X):
        return self.regressor_.predict(np.where(self.unused_features_, 0.0, X))


EMPIRICAL_MODELS: dict[str, type[EmpiricalModel]] = {
    "1lin": OneLin,
    "2lin": TwoLin,
    "3km27": KMeansRegression,
    "gbm": GradientBoosting,
}


# ------------------------------------------------------------------ registry entries (run pipeline)


class EmpiricalOptions(BaseModel):
    """``options`` of the empirical benchmarks: the fluxes to fit (one regression each)."""

    model_config = OPTIONS_CONFIG

    targets: list[Literal[ALLOWED_TARGETS]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: ["Qle", "Qh"], min_length=1)


class EmpiricalSpec(ModelSpec):
    """``ModelSpec`` of one empirical benchmark: one regression per target flux, pooled over the
    training columns; saved without pickle (``EmpiricalModel.save``)."""

    Options = EmpiricalOptions
    targets = ALLOWED_TARGETS

    def build(self, options: EmpiricalOptions) -> dict[str, EmpiricalModel]:
        return {t: EMPIRICAL_MODELS[self.name]() for t in options.targets}

    def train(self, model, options, train, val, ctx: TrainingContext):
        columns = [ds for d in train for ds in d.columns()]
        for target, est in model.items():
            est.fit(columns, target, [usable_targets(ds, [target], ctx.max_qc)[1][:, 0] for ds in columns])
        return model

    def predict(self, model, domain: Domain) -> dict[str, np.ndarray]:
        columns = domain.columns()
        return {target: np.stack([est.predict(ds) for ds in columns], axis=1) for target, est in model.items()}

    def save(self, model, options, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        digests = {}
        for target, est in model.items():
            digests.update(est.save(directory, target))
        write_model_json(directory, self.name, options, {}, digests)

    def load(self, options, directory: Path):
        read_model_json(directory)  # checks the files' checksums
        try:
            return {t: est.restore(directory, t, t) for t, est in self.build(options).items()}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:  # a damaged or foreign file
            raise SavedModelError(f"{directory}: cannot load the saved {self.name} ({type(err).__name__}: {err})") from None

    def required_inputs(self, options) -> tuple[str, ...]:
        return tuple(EMPIRICAL_MODELS[self.name]().inputs) + ("Precip",) * (self.name == "gbm")


def _register_empirical() -> None:
    for name in EMPIRICAL_MODELS:
        register_model(name)(type(f"{name.capitalize()}Spec", (EmpiricalSpec,), {"__doc__": EmpiricalSpec.__doc__}))


_register_empirical()
