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
with forcing, a land-cover map and observations (NaN = missing). The networks see the forcing
normalised physically (``data.gridprep.physical_normalise``), the derived features (wind shear,
temperature gradient, bulk Richardson number, with a radiative estimate of the surface temperature,
since the parameteriser runs before the physics), the land-cover classes one-hot (over the classes
given, so that a trained model applies to another grid) and the normalised elevation. A forcing
without the wind's direction (Wind_E, Wind_N; e.g. Livneh or MetSim files, which give the speed)
runs without lateral advection, and says so (``RegionData.advection``).

The models hold no grid: the physics (``regional_physics``) is built for each grid they train on
or predict, so a model trained on one region applies to another.

Training windows (``window`` hours) cover the whole grid; each starts from the state that the
hybrid being trained carries there itself (its fields over the record and the physics run through
them from the record's start, renewed every epoch: ``CarriedStates``), as when it predicts, and its
first ``warmup`` hours are not scored.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace
from functools import partial

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from ..constants import STEFAN_BOLTZMANN
from ..data.gridded import grid_axis_signs
from ..data.gridprep import physical_normalise
from ..config import IGBP_CLASSES
from ..data.schema import DataError, DataWarning
from ..domain.build import grid_mask, land_cover_codes
from ..neural import MC_KEY, SpatiotemporalOptions, SpatiotemporalParameteriser, physical_features
from ..physics import (GRADIENT_CHUNK, RUN_TIME_CELLS, default_params, forcing_from_datasets, rollout,
                       run_time_jit)
from ..physics.air_layer import AirLayer
from ..physics.exchange import ExchangeLaw
from ..physics.lad import PRESCRIBED_KH, PRESCRIBED_KH_SCALE, PRESCRIBED_RS, LaDModel
from ..physics.regional import GridForcing, RegionalModel
from ..training.trainer import ModelBatches
from .column import product_albedo
from .hybrid import FALLBACK_OUTPUT, FALLBACK_SAMPLES
from .regional_loop import Fallback, closed_loop

__all__ = [
    "RegionData", "region_data", "RegionalHybrid", "new_hybrid", "new_cnn_lstm", "N_VARIABLES", "CNNLSTM", "fixed_kh_model", "regional_physics", "build_hybrid",
    "build_cnn_lstm", "hybrid_loss", "cnn_lstm_loss", "make_batches", "blocked_split", "window_states", "window_starts",
    "train_regional", "predict_regional", "epistemic_fallback", "class_reference", "reference_values", "Fallback", "field_spread", "record_fields", "residual_sd", "with_residual_sd", "CarriedStates", "CarriedStateBatches", "mc_dropout_regional", "MC_FIELDS", "REGIONAL_FORCING", "TARGETS",
    "hybrid_physics", "run_fields", "network_fields",
]

#: the dynamic inputs of the networks, in order (ALMA names)
REGIONAL_FORCING = ("Tair", "Qair", "Psurf", "Wind_E", "Wind_N", "SWdown", "LWdown", "Precip")
#: LaD defaults for classes LaD does not have (water, WAT, has its own: open water, physics.OPEN_WATER_PARAMETERS)
LAD_CLASS_OF = {"SNO": "BSV"}
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
        spacing: (dx, dy) [m] (``cell_spacing``)
        time: (T,) datetime64
        constants: the physical normalisation's constants (``physical_normalise``)
        advection: False where the forcing has no wind direction (no lateral advection)
        active: (N,) True where the cell is a column (``region_data``: cells without forcing are
            not modelled; inside the model their forcing is the active cells' mean, their network
            inputs 0 and their observations missing)
        boundary: the air layer's lateral boundaries, "open" or "periodic" (``physics.air_layer``;
            the regional models' ``boundary`` option)
    """

    shape: tuple[int, int]
    forcing: GridForcing
    variables: np.ndarray
    static: np.ndarray
    params: dict
    observed: dict[str, np.ndarray]
    classes: tuple[str, ...]
    cell_class: np.ndarray
    spacing: tuple[float, float]
    time: np.ndarray
    constants: dict = field(default_factory=dict)
    advection: bool = True
    source: xr.Dataset = field(repr=False, default=None)
    active: np.ndarray = None
    boundary: str = "open"

    def __post_init__(self):
        if self.active is None:
            self.active = np.ones(self.shape[0] * self.shape[1], bool)

    @property
    def n_steps(self) -> int:
        return self.forcing.n_steps

    @property
    def cell_size(self) -> float:
        """The cells' mean length [m] (the geometric mean of dx and dy)."""
        return float(np.sqrt(self.spacing[0] * self.spacing[1]))

    @property
    def run_time(self) -> bool:
        """Whether the grid is large enough (``RUN_TIME_CELLS``) to compile its physics for run time
        (``physics.run_time_jit``)."""
        return self.shape[0] * self.shape[1] >= RUN_TIME_CELLS

    def window(self, start: int, length: int) -> tuple[GridForcing, np.ndarray]:
        return self.forcing.at(slice(start, start + length)), self.variables[:, start : start + length]


def _radiative_surface_temperature(ds: xr.Dataset) -> np.ndarray:
    """A surface temperature the parameteriser can know before the physics runs: the radiative
    equilibrium of the absorbed radiation, ((0.8 SW + LW) / sigma)^(1/4), limited to Tair +- 15 K
    (day: warmer than the air, night: colder, which is what the Richardson number needs)."""
    t_rad = ((0.8 * ds["SWdown"].values + ds["LWdown"].values) / STEFAN_BOLTZMANN) ** 0.25
    tair = ds["Tair"].values
    return np.clip(t_rad, tair - 15.0, tair + 15.0)


def cell_classes(ds: xr.Dataset) -> np.ndarray:
    """(ny, nx) IGBP codes of the cells: the ``igbp`` field of ``Domain.grid_dataset`` or the
    ``land_cover`` index field (IGBP numbering or CF flag meanings, ``domain.land_cover_codes``)."""
    if "igbp" in ds:
        return np.asarray(ds["igbp"].transpose("y", "x").values).astype(str)
    if "land_cover" in ds:
        lc = ds["land_cover"].transpose("y", "x")
        return land_cover_codes(np.asarray(lc.values), dict(lc.attrs)).astype(str)
    file = ds.attrs.get("source_file", ds.attrs.get("site_id", "<grid>"))
    raise DataError(f"{file}: the regional models need each cell's land cover (a land_cover field, or "
                    "data.grid.igbp in the config for a grid without one)")


EARTH_RADIUS = 6.371e6  # [m]


def cell_spacing(ds: xr.Dataset) -> tuple[float, float]:
    """(dx, dy) [m] of a grid: the ``cell_size_m`` attribute, else the spacing of ``x``/``y``
    coordinates in m or km, else the spacing of ``lat``/``lon`` fields on the sphere (mean over the
    grid); a grid with none of these, or whose spacing is not positive and finite (a latitude that
    repeats, or lies beyond the poles), is a DataError."""
    file = ds.attrs.get("source_file", ds.attrs.get("site_id", "<grid>"))

    def checked(dx: float, dy: float, source: str) -> tuple[float, float]:
        if not (np.isfinite(dx) and np.isfinite(dy) and dx > 0 and dy > 0):
            raise DataError(f"{file}: the cell size from {source} is dx = {dx:g} m, dy = {dy:g} m; the regional air "
                            f"layer needs a positive, finite spacing (check {source}, or give the grid a "
                            "cell_size_m attribute)")
        return float(dx), float(dy)

    if "cell_size_m" in ds.attrs:
        return checked(float(ds.attrs["cell_size_m"]), float(ds.attrs["cell_size_m"]), "its cell_size_m attribute")
    one_line = min(ds.sizes["x"], ds.sizes["y"]) < 2
    scale = {"m": 1.0, "metre": 1.0, "meter": 1.0, "km": 1000.0}
    units = [str(ds[c].attrs.get("units", "")) if c in ds.coords else "" for c in ("x", "y")]
    if all(u in scale for u in units) and not one_line:
        dx, dy = (float(np.mean(np.abs(np.diff(ds[c].values)))) * scale[u] for c, u in zip(("x", "y"), units))
        return checked(dx, dy, "its x/y coordinates")
    if "lat" in ds.coords and "lon" in ds.coords and not one_line:
        lat_deg = ds["lat"].transpose(*(d for d in ("y", "x") if d in ds["lat"].dims)).values
        if not np.all(np.abs(lat_deg) <= 90.0):
            raise DataError(f"{file}: lat holds values outside -90..90 degrees (or missing ones), e.g. "
                            f"{np.asarray(lat_deg).flat[int(np.argmax(~(np.abs(lat_deg) <= 90.0)))]}; the cell size "
                            "comes from lat/lon")
        lat, lon = (np.radians(ds[c].transpose("y", "x").values) for c in ("lat", "lon"))
        dx = EARTH_RADIUS * np.mean(np.cos(lat[:, :-1]) * np.abs(np.diff(lon, axis=1)))
        dy = EARTH_RADIUS * np.mean(np.abs(np.diff(lat, axis=0)))
        return checked(float(dx), float(dy), "its lat/lon coordinates")
    if one_line:
        raise DataError(f"{file}: a grid of {ds.sizes['y']} x {ds.sizes['x']} cells has no spacing to read from its "
                        "coordinates; give it a cell_size_m attribute (the regional air layer needs the cell size)")
    raise DataError(f"{file}: the cell size is unknown (no cell_size_m attribute, no x/y coordinates in m or km, "
                    "no lat/lon fields); the regional air layer needs it")


def active_cells(ds: xr.Dataset) -> np.ndarray:
    """(ny, nx) True where a cell of a (time, y, x) dataset is a column: some forcing value is given
    (cells whose forcing is missing at every step, e.g. outside a basin or a masked water cell,
    are not), and the grid's ``mask`` (``grid_mask``), if any, is 1."""
    names = [v for v in (*REGIONAL_FORCING, "Wind") if v in ds]
    given = np.zeros((ds.sizes["y"], ds.sizes["x"]), bool)
    for name in names:
        given |= np.isfinite(ds[name].transpose("time", "y", "x").values).any(axis=0)
    inside = grid_mask(ds)
    return given if inside is None else given & inside


def _albedo_product(ds: xr.Dataset, active: np.ndarray) -> np.ndarray | None:
    """(N,) albedo of the grid's surface albedo product (a satellite product: the columns run it
    instead of LaD's class default; cells that are not columns get 0.2), else None: its ``Albedo``
    field (y, x) (ALMA, a file's), or a Domain's static ``albedo`` (``Domain.grid_dataset``; all NaN:
    the domain has no product). A value outside the albedo parameter's bounds (0.03, 0.6) or missing
    at a column is a DataError naming the cell."""
    name = next((v for v in ("Albedo", "albedo") if v in ds), None)
    file = ds.attrs.get("source_file", "the grid")
    if name is None:
        return None
    albedo = ds[name]
    if albedo.dims != ("y", "x"):
        raise DataError(f"{file}: variable {name} has dims {albedo.dims}; expected ('y', 'x') (one albedo per cell)")
    if name == "albedo" and not np.isfinite(np.asarray(albedo.values, float)).any():
        return None
    nx = ds.sizes["x"]
    names = [f"cell (y={i // nx}, x={i % nx})" for i in range(albedo.size)]
    return product_albedo(np.where(active, albedo.values, 0.2), names, file, required=active.reshape(-1))


def checked_region(ds: xr.Dataset, classes: tuple[str, ...] | None = None):
    """``(ds, active, codes, classes, spacing, advection)`` of a gridded canonical dataset, after
    every check ``region_data`` makes of it (a DataError naming the variable, cell and time, or the
    class): ``ds`` on (time, y, x) with wind components (0 where the forcing gives the speed alone,
    ``advection`` False), ``active`` (ny, nx) its columns, ``codes`` (N,) each cell's IGBP class (the
    columns' most common one where no column is), ``classes`` those of the one-hot (``classes``, or
    the map's), ``spacing`` (dx, dy) [m]. A run calls it before it writes anything
    (``RegionalSpec.check_required_inputs``)."""
    file = ds.attrs.get("source_file", ds.attrs.get("site_id", "<grid>"))
    ds = ds.transpose("time", "y", "x", ...)
    advection = "Wind_E" in ds or "Wind_N" in ds
    if not advection and "Wind" in ds:  # the speed alone: the columns use it, the air layer does not advect
        zero = xr.zeros_like(ds["Wind"])
        ds = ds.assign(Wind_E=zero, Wind_N=zero)
    missing = [v for v in (*REGIONAL_FORCING, "Wind") if v not in ds]
    if missing:
        raise DataError(f"{file}: the regional models need {', '.join(missing)}")
    active = active_cells(ds)
    if not active.any():
        raise DataError(f"{file}: no cell has forcing; the regional models need at least one column")
    for name in (*REGIONAL_FORCING, "Wind"):
        bad = ~np.isfinite(ds[name].values) & active[None]
        if bad.any():
            t, y, x = np.argwhere(bad)[0]
            raise DataError(f"{file}: {name} is missing at time {str(ds.time.values[t])[:16]}, cell (y={y}, x={x}) "
                            f"and {int(bad.sum()) - 1} more values; the regional models need complete forcing in "
                            "every cell that has some (a cell without any is not modelled; the column models run "
                            "on gappy records)")
    codes = cell_classes(ds)
    unknown = sorted({str(c) for c in codes[active] if c not in IGBP_CLASSES})
    if unknown:
        raise DataError(f"{file}: cells of land cover {unknown} (not IGBP classes; '' = unknown); the regional "
                        "models need each cell's class")
    if (~active).any():  # a class for the columns that are not modelled (LaD needs one; the one-hot is 0)
        values, counts = np.unique(codes[active], return_counts=True)
        codes = np.where(active, codes, values[np.argmax(counts)])
    codes = codes.reshape(-1)
    classes = tuple(sorted(set(codes.tolist()), key=IGBP_CLASSES.index)) if classes is None else tuple(classes)
    extra = sorted(set(codes.tolist()) - set(classes))
    if extra:
        raise DataError(f"{file}: cells of class {extra}, which the model does not know (it knows "
                        f"{', '.join(classes)})")
    spacing = cell_spacing(ds)
    _albedo_product(ds, active)  # its checks
    return ds, active, codes, classes, spacing, advection


def region_data(ds: xr.Dataset, dtype=None, *, classes: tuple[str, ...] | None = None,
                constants: dict | None = None, boundary: str = "open") -> RegionData:
    """A :class:`RegionData` from a gridded canonical dataset on (time, y, x) (e.g.
    ``data.virtual_region.virtual_region``, ``Domain.grid_dataset``). A cell whose forcing is
    missing at every step (or whose ``mask`` is 0) is not a column (``active_cells``): it is not
    modelled, and nothing is estimated for it (``RegionData.active``); every other cell needs
    complete forcing: a missing forcing variable or a gap is a DataError naming it. ``classes``:
    the IGBP classes of the land-cover one-hot (default: those of the map's columns);
    ``constants``: the normalisation's (default: this record's). Both as a trained model recorded
    them, to apply it to another grid. ``boundary``: the air layer's ("open" or "periodic")."""
    ds, active, codes, classes, spacing, advection = checked_region(ds, classes)
    source, inactive = ds, ~active
    if inactive.any():
        # inside the model only: the columns of cells that are not modelled run on the active cells'
        # mean forcing (finite, so that no NaN reaches a gradient); their outputs are dropped
        dims = ("time", "y", "x")
        cell = xr.DataArray(inactive, dims=("y", "x"))
        filled = {name: ds[name].where(~cell, ds[name].where(~cell).mean(("y", "x")))
                  for name in (*REGIONAL_FORCING, "Wind") if ds[name].dims == dims}
        ds = ds.assign(filled)
        ds = ds.assign({name: ds[name].where(~cell) for name in TARGETS if name in ds})
    ny, nx = ds.sizes["y"], ds.sizes["x"]
    n, t = ny * nx, ds.sizes["time"]
    dtype = jnp.zeros(0).dtype if dtype is None else dtype
    grid = ds[[*REGIONAL_FORCING, "Wind"]].stack(column=("y", "x")).transpose("time", "column")
    column_forcing = forcing_from_datasets([grid.assign_attrs(time_step_s=float(ds.attrs["time_step_s"]))], dtype=dtype)
    cols = lambda a: jnp.asarray(np.reshape(np.asarray(a), (t, n)), dtype)  # noqa: E731
    # the air layer and the derived features work along increasing index: a grid stored north to
    # south (or east to west) has its wind component turned to match (the grid keeps its layout)
    east, north = grid_axis_signs(ds)
    wind_e, wind_n = east * ds["Wind_E"].values, north * ds["Wind_N"].values
    forcing = GridForcing(column_forcing, cols(wind_e), cols(wind_n))

    cell_class = np.array([classes.index(c) for c in codes])
    onehot = (cell_class[None, :] == np.arange(len(classes))[:, None]).reshape(len(classes), ny, nx) & active
    lad_codes = [LAD_CLASS_OF.get(c, c) for c in codes]  # WAT: open water (physics.OPEN_WATER_PARAMETERS)
    params = default_params(lad_codes, albedo=_albedo_product(ds, active), dtype=dtype)

    normalised, constants = physical_normalise(ds[list(REGIONAL_FORCING)], constants=constants)
    height = np.asarray(params["reference_height"]).reshape(ny, nx)
    z0 = np.asarray(params["z0m"]).reshape(ny, nx)
    derived, _ = physical_features(ds["Tair"].values, ds["Qair"].values, wind_e, wind_n,
                                   ds["Psurf"].values, _radiative_surface_temperature(ds), height=height, z0=z0,
                                   grid_spacing=float(np.sqrt(spacing[0] * spacing[1])))
    derived = np.asarray(derived)
    derived = np.sign(derived) * np.log1p(np.abs(derived))  # heavy-tailed (Ri): a signed log scale
    variables = np.concatenate([np.stack([normalised[v].values for v in REGIONAL_FORCING]), derived])
    variables = np.where(active, variables, 0.0).astype(dtype)  # the networks see nothing where no column is
    elevation = np.where(active, ds["elevation"].values, np.nan) if "elevation" in ds else np.zeros((ny, nx))
    elevation = np.nan_to_num(elevation - np.nanmean(elevation)) / 500.0 if np.isfinite(elevation).any() \
        else np.zeros((ny, nx))
    static = np.concatenate([onehot, elevation[None]]).astype(dtype)
    observed = {name: np.reshape(ds[name].values, (t, n)).astype(dtype) for name in TARGETS if name in ds}
    return RegionData((ny, nx), forcing, variables, static, params, observed, classes, cell_class,
                      spacing, ds.time.values, dict(constants), advection, source, active.reshape(-1), boundary)


#: prediction halves a step where the coupling residual exceeds the closed loop's 10 W m-2 (training
#: takes every step whole: each refinement level is one more compiled copy of the step)
PREDICT_REFINEMENTS = 1


def regional_physics(data: RegionData, land: LaDModel | None = None) -> RegionalModel:
    """The gridded physics for ``data``'s grid and boundaries, with transport sub-steps for its
    winds, for training (no refinement; ``predict_regional`` allows ``PREDICT_REFINEMENTS``)."""
    air = AirLayer(data.shape, dx=data.spacing[0], dy=data.spacing[1], boundary=data.boundary, active=data.active)
    return RegionalModel(air, land=land or LaDModel(), max_refinements=0).for_forcing(data.forcing)


def fixed_kh_model(data: RegionData) -> RegionalModel:
    """seed 000's traditional PGML: K_h from the Louis scheme, LaD's r_s per class, nothing learned."""
    return regional_physics(data)


#: how a hybrid's first field sets the exchange: "field": K_h itself [m2 s-1] (seed 000); "scale": a
#: multiplier of the physics' own K_h (its stability scheme: the wind and stability dependence come
#: from the physics, the network learns where and when it is off; ``physics.lad.PRESCRIBED_KH_SCALE``)
EXCHANGE_FIELDS = {"field": PRESCRIBED_KH, "scale": PRESCRIBED_KH_SCALE}


class RegionalHybrid(eqx.Module):
    """The parameteriser and the co-trained discovery law. ``net(variables, static, key=None)``
    gives (2, T, ny, nx): K_h (or its multiplier, ``exchange="scale"``), then r_s (the
    spatiotemporal network, or any module with that call, e.g. an ablation's per-class constants).
    The physics is the grid's (``hybrid_physics``)."""

    net: eqx.Module
    law: ExchangeLaw
    exchange: str = eqx.field(static=True, default="field")
    #: weight of the class-pooling prior in the training loss (:func:`class_spread`): cells of one
    #: land-cover class under the same weather should share their parameters, so the spread of each
    #: log field about its class mean at the same step is penalised (0: off, the seed's hybrid)
    class_pooling: float = eqx.field(static=True, default=0.0)
    #: None: the network's r_s is the surface resistance; D0 [kPa]: the physics raises it with the
    #: vapour-pressure deficit, r_s (1 + D / D0) (``physics.lad.vpd_response``), so the network gives
    #: the resistance at D = 0 and the response extrapolates to drier air than training saw
    rs_vpd_d0: float | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if self.exchange not in EXCHANGE_FIELDS:
            raise ValueError(f"RegionalHybrid exchange {self.exchange!r}: expected one of {tuple(EXCHANGE_FIELDS)}")
        if not (self.class_pooling >= 0.0 and math.isfinite(self.class_pooling)):
            raise ValueError(f"RegionalHybrid class_pooling {self.class_pooling!r}: expected a finite weight >= 0")

    def fields(self, variables, static, key=None) -> tuple[jax.Array, jax.Array]:
        """(K_h or its multiplier, r_s) as (T, N) from (V, T, ny, nx) inputs."""
        out = self.net(variables, static, key=key)
        t = out.shape[1]
        return out[0].reshape(t, -1), out[1].reshape(t, -1)

    def run(self, physics: RegionalModel, params, forcing: GridForcing, variables, static, state0=None, key=None,
            chunk=GRADIENT_CHUNK, fields=None):
        """Rollout of ``physics`` with the predicted fields: (final state, outputs incl. Kh, rs, RiB);
        ``chunk``: the rollout's (default: the training loss's, ``physics.GRADIENT_CHUNK``); ``fields``:
        ``self.fields(variables, static, key)`` when the caller has them already."""
        kh, rs = self.fields(variables, static, key) if fields is None else fields
        dynamic = {EXCHANGE_FIELDS[self.exchange]: kh, PRESCRIBED_RS: rs}
        return rollout(physics, params, forcing, state0, dynamic=dynamic, chunk=chunk)


class CNNLSTM(eqx.Module):
    """The pure-network baseline: the same encoder-decoder (3-D convolutions, Bi-GRU, attention,
    transposed convolutions) predicting Qh and Qle directly, bounded to [-300, 900] W m-2."""

    net: SpatiotemporalParameteriser

    def predict(self, variables, static, key=None) -> dict[str, jax.Array]:
        out = self.net(variables, static, key=key)
        t = out.shape[1]
        return {"Qh": out[0].reshape(t, -1), "Qle": out[1].reshape(t, -1)}


FLUX_BOUNDS = {"Qh": (-300.0, 900.0), "Qle": (-300.0, 900.0)}


#: network inputs: the forcing and the derived features (wind shear, temperature gradient, bulk Ri)
N_VARIABLES = len(REGIONAL_FORCING) + 3


def network_fields(exchange: str) -> tuple[str, str]:
    """The two fields a hybrid's parameteriser gives for ``exchange`` (:data:`EXCHANGE_FIELDS`): K_h or
    its multiplier, then r_s."""
    return ("Kh_scale" if exchange == "scale" else "Kh", "rs")


def new_hybrid(n_classes: int, options: SpatiotemporalOptions | None = None, seed: int = 0,
               dtype=None, exchange: str = "field", class_pooling: float = 0.0,
               rs_vpd_d0: float | None = None) -> RegionalHybrid:
    """An untrained hybrid for land-cover one-hots of ``n_classes`` classes (static inputs: those
    and the elevation); ``exchange``: see :data:`EXCHANGE_FIELDS`; ``class_pooling`` and
    ``rs_vpd_d0``: see :class:`RegionalHybrid`."""
    dtype = jnp.zeros(0).dtype if dtype is None else dtype
    net = SpatiotemporalParameteriser(N_VARIABLES, n_classes + 1, names=network_fields(exchange), options=options,
                                      dtype=dtype, key=jax.random.key(seed))
    return RegionalHybrid(net, ExchangeLaw.neutral(dtype=dtype), exchange, class_pooling, rs_vpd_d0)


def new_cnn_lstm(n_classes: int, options: SpatiotemporalOptions | None = None, seed: int = 0,
                 dtype=None) -> CNNLSTM:
    net = SpatiotemporalParameteriser(N_VARIABLES, n_classes + 1, names=("Qh", "Qle"),
                                      prior={"Qh": 50.0, "Qle": 50.0}, bounds=FLUX_BOUNDS, options=options,
                                      dtype=jnp.zeros(0).dtype if dtype is None else dtype, key=jax.random.key(seed))
    return CNNLSTM(net)


def build_hybrid(data: RegionData, options: SpatiotemporalOptions | None = None, seed: int = 0,
                 exchange: str = "field", class_pooling: float = 0.0,
                 rs_vpd_d0: float | None = None) -> RegionalHybrid:
    """An untrained hybrid for ``data``'s classes."""
    return new_hybrid(len(data.classes), options, seed, data.variables.dtype, exchange, class_pooling, rs_vpd_d0)


def hybrid_physics(data: RegionData, model: RegionalHybrid) -> RegionalModel:
    """The gridded physics a hybrid trains and predicts with: ``regional_physics`` with the hybrid's
    response of r_s to the vapour-pressure deficit, if it has one."""
    return regional_physics(data, land=LaDModel(rs_vpd_d0=model.rs_vpd_d0))


def build_cnn_lstm(data: RegionData, options: SpatiotemporalOptions | None = None, seed: int = 0) -> CNNLSTM:
    return new_cnn_lstm(len(data.classes), options, seed, data.variables.dtype)


def window_states(model: RegionalModel, data: RegionData, starts, params=None, dynamic: dict | None = None):
    """The physics' state at each window start: one rollout carried through the record from its
    start (``init_state``), with the (T, N) ``dynamic`` fields prescribed (none: the fixed-K_h
    physics)."""
    params = data.params if params is None else params
    dynamic = {} if dynamic is None else dynamic
    states, state, t = {}, model.init_state(params, data.forcing), 0
    for start in sorted(starts):
        if start > t:
            state = _carry(model, state, params, data.forcing.at(slice(t, start)),
                           {k: v[t:start] for k, v in dynamic.items()}, run_time=data.run_time)
            t = start
        states[start] = state
    return states


_carry = run_time_jit(lambda model, state, params, forcing, dynamic: rollout(
    model, params, forcing, state, dynamic=dynamic or None, chunk=None)[0])


class CarriedStates:
    """``model -> {window start: state}``: the states a regional hybrid carries through the record
    itself, i.e. its deterministic fields over the whole record (computed window by window, as
    ``predict_regional`` does) and the physics run continuously through them from the record's
    start. Training windows start from these, so that a window's soil water and temperature are
    the ones the model would have there when it predicts; with states from another model (the
    fixed-K_h physics, whose bare and urban columns evaporate at r_s ~ 0 and dry out) the fields
    were fitted to the wrong soil water. The last model's states are kept: ``fit`` validates the
    model of the end of an epoch and starts the next epoch from the same parameters."""

    def __init__(self, physics: RegionalModel, data: RegionData, starts, window: int, warmup: int):
        self.physics, self.data, self.starts = physics, data, sorted(starts)
        self.window, self.warmup = window, warmup
        self._leaves: list = []
        self._states: dict | None = None

    def __call__(self, model: RegionalHybrid) -> dict:
        leaves = jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_array))
        same = self._states is not None and len(leaves) == len(self._leaves) and \
            all(a is b for a, b in zip(leaves, self._leaves))
        if not same:
            fields = record_fields(model, self.data, window=self.window, warmup=self.warmup)
            dynamic = {EXCHANGE_FIELDS[model.exchange]: jnp.asarray(fields["Kh"]), PRESCRIBED_RS: jnp.asarray(fields["rs"])}
            self._states = window_states(self.physics, self.data, self.starts, dynamic=dynamic)
            self._leaves = leaves  # held, so that their ids stay theirs
        return self._states


class CarriedStateBatches(ModelBatches):
    """The training windows of a regional hybrid, each starting from the state the model being
    trained carries there (:class:`CarriedStates`); ``fit`` shuffles them every epoch."""

    def __init__(self, states: CarriedStates, scored_steps: np.ndarray):
        self.states, self.scored = states, np.asarray(scored_steps, bool)

    def __call__(self, model):
        d = self.states
        return make_batches(d.data, self.scored, d.window, d.warmup, d(model))


def masked_mse(pred, obs, mask):
    """Mean of (pred - obs)^2 over ``mask`` (0 when nothing is observed)."""
    diff = jnp.where(mask, pred - jnp.where(mask, obs, 0.0), 0.0)
    return jnp.sum(diff**2) / jnp.maximum(jnp.sum(mask), 1.0)


def _column_mean(active, a):
    """Mean of a (T, N) array over the active cells (``AirLayer.active``; None: all)."""
    if active is None:
        return jnp.mean(a)
    return jnp.sum(jnp.where(active.values, a, 0.0)) / (a.shape[0] * active.n_active)


def class_spread(field, membership):
    """Mean over the cells and steps of sum_c w_cn |log f_tn - m_tc|, the spread of a positive (T, N)
    field about its class means m_tc (the w-weighted mean of log f over the cells at step t), for
    (C, N) class memberships w (one-hots or fractions; 0 for cells that are not columns)."""
    log_f = jnp.log(field)
    weight = jnp.sum(membership, axis=1)  # (C,)
    means = (log_f @ membership.T) / jnp.maximum(weight, 1e-6)  # (T, C)
    spread = jnp.sum(membership[None] * jnp.abs(log_f[:, None, :] - means[:, :, None]), axis=1)  # (T, N)
    return jnp.sum(spread) / (field.shape[0] * jnp.maximum(jnp.sum(membership), 1.0))


def hybrid_loss(model: RegionalHybrid, batch, key, weights, *, physics: RegionalModel):
    """Scaled MSE of the observed targets after the warm-up, plus the phase-2 terms and, with
    ``model.class_pooling``, the class-pooling prior (both phases)."""
    fields = model.fields(batch["variables"], batch["static"], key)
    _, out = model.run(physics, batch["params"], batch["forcing"], batch["variables"], batch["static"],
                       batch["state"], key, fields=fields)
    terms = {}
    data_loss = 0.0
    for name in (t for t in TARGETS if t in batch["obs"]):  # the run's targets (grid_record keeps only those)
        obs = batch["obs"][name]
        mask = jnp.isfinite(obs) & batch["scored"][:, None]
        term = masked_mse(out[name] / SCALES[name], obs / SCALES[name], mask)
        terms[f"mse_{name}"] = term
        data_loss = data_loss + term
    # phase 2 (seed eqs. 6, 8, 9): energy residual of every column and of the air layer [W m-2],
    # scaled like the fluxes; L1 on the K_h field; the law's misfit to the network's K_h
    # (means over the columns: cells that are not columns are not modelled)
    mean = partial(_column_mean, physics.air.active)
    energy = mean(jnp.abs(out["Rnet"] - out["Qh"] - out["Qle"] - out["Qg"] - out["Qf"])) \
        + jnp.mean(out["air_energy_residual"])
    sparsity = mean(jnp.abs(out["Kh"]))
    ri = jax.lax.stop_gradient(out["RiB"])
    discovery = mean((jnp.log(out["Kh"]) - model.law.log_kh(batch["forcing"].column.wind, ri)) ** 2)
    terms.update(energy=energy, sparsity=sparsity, discovery=discovery)
    loss = data_loss + weights["energy"] * energy / SCALES["Qh"] + weights["sparsity"] * sparsity \
        + weights["discovery"] * discovery
    if model.class_pooling > 0.0:
        # the land-cover memberships are the static inputs before the elevation (``region_data``)
        membership = batch["static"][:-1].reshape(batch["static"].shape[0] - 1, -1)
        terms["class_spread"] = sum(class_spread(f, membership) for f in fields)
        loss = loss + model.class_pooling * terms["class_spread"]
    return loss, terms


def cnn_lstm_loss(model: CNNLSTM, batch, key, weights):
    out = model.predict(batch["variables"], batch["static"], key)
    terms = {}
    for name in (t for t in ("Qh", "Qle") if t in batch["obs"]):
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
        scored = _window_scored(scored_steps, start, window, warmup)
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


def _window_scored(scored_steps: np.ndarray, start: int, window: int, warmup: int) -> np.ndarray:
    """(window,) bool: the steps of the window at ``start`` that its loss scores."""
    scored = np.asarray(scored_steps[start : start + window]).copy()
    scored[:warmup] = False
    return scored


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


def _val_fn(loss_fn, batches, run_time: bool = False):
    """Mean data loss (no phase-2 terms, no dropout) over the validation windows: ``batches`` a list,
    or ``model -> list`` (windows from the model's own states); ``run_time``: compiled for run time
    (``RegionData.run_time``)."""
    zero = {"energy": 0.0, "sparsity": 0.0, "discovery": 0.0}
    loss = run_time_jit(lambda m, b: loss_fn(m, b, None, zero)[0])

    def val(model) -> float:
        windows = batches(model) if callable(batches) else batches
        return float(np.mean([float(loss(model, b, run_time=run_time)) for b in windows]))

    return val


def train_regional(model, data: RegionData, cfg, *, split: dict[str, np.ndarray], window: int = 48,
                   warmup: int = 12, checkpoint_dir=None, progress: bool = True, resume: bool = False):
    """Train a :class:`RegionalHybrid` or :class:`CNNLSTM` on ``data``'s observations at the
    ``split["train"]`` steps, early-stopping on the ``split["val"]`` steps (``training.trainer.fit``:
    AdamW, clipping, the learning-rate schedule and two-phase weights of ``cfg``, a ``TrainConfig``).
    A hybrid's windows start from the states it carries through the record itself
    (:class:`CarriedStates`, renewed every epoch), as they are when it predicts.
    Returns ``fit``'s result (``.model``, ``.history``, ...)."""
    from ..training.trainer import fit

    starts = window_starts(data.n_steps, window, warmup)
    if not all(any(_window_scored(split[k], s, window, warmup).any() for s in starts) for k in ("train", "val")):
        raise ValueError(f"train_regional: {data.n_steps} steps give no training or no validation window of "
                         f"{window} steps")
    if isinstance(model, RegionalHybrid):
        physics = hybrid_physics(data, model)
        states = CarriedStates(physics, data, starts, window, warmup)
        loss_fn = partial(hybrid_loss, physics=physics)
        train_batches = CarriedStateBatches(states, split["train"])
        val_batches = lambda m: make_batches(data, split["val"], window, warmup, states(m))  # noqa: E731
    else:
        loss_fn = cnn_lstm_loss
        train_batches = make_batches(data, split["train"], window, warmup, None)
        val_batches = make_batches(data, split["val"], window, warmup, None)
    return fit(model, loss_fn, train_batches, _val_fn(loss_fn, val_batches, data.run_time), cfg, checkpoint_dir,
               progress=progress, resume=resume, run_time=data.run_time)


def predict_regional(model, data: RegionData, *, window: int = 48, warmup: int = 12, key=None,
                     fallback: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """Outputs over the whole record ((T, N) arrays; ``rs_field``: the r_s prescribed or set by the
    parameters, where the output ``rs`` is the effective resistance with water stress). Physics
    models run continuously; the hybrid's fields are computed window by window (each window's
    fields kept after its warm-up, the first window's from its start) and the physics runs through
    them continuously in the closed loop (``models.regional_loop``: ``Kh_field``, ``rs_field`` are
    the fields used, ``recomputed`` marks the cells of steps recomputed with adjusted fields,
    ``closed_loop`` the loop's totals); the CNN-LSTM predicts window by window the same way. Cells
    that are not columns (``data.active``) are NaN. ``fallback``: a hybrid's epistemic fallback
    masks (``epistemic_fallback``), passed to the closed loop; the output ``fallback`` is then the
    fraction of the two fields (K_h, r_s) that fell back at each cell and step.

    Every model starts from the physics' initial state, as training does (``window_states``), not
    from a state cycled over the record's first days: on the virtual region such a spin-up (June
    days repeated) dried the soils far below the truth's, and the physics through the truth's own
    fields scored several times worse from it (docs/results.md, ``truth_spun_up`` of
    benchmarks/regional_hot_days.py). A state from the weeks before a period comes from a lead-in
    (``hybridlsm predict --start`` runs the record before the period)."""
    if fallback is not None and not isinstance(model, RegionalHybrid):
        raise ValueError(f"predict_regional: an epistemic fallback for a {type(model).__name__}; only a "
                         "RegionalHybrid has fields to fall back from")
    if isinstance(model, RegionalModel):
        model = replace(model, max_refinements=PREDICT_REFINEMENTS)
        _, out = _physics_run(model, data.params, data.forcing, run_time=data.run_time)
        rs = np.asarray(data.params["rs_min"] * data.params["rs_scale"])
        out = {**{k: np.asarray(v) for k, v in out.items()}, "rs_field": np.broadcast_to(rs, out["Qh"].shape)}
        return _not_modelled(out, data.active)
    cnn = isinstance(model, CNNLSTM)
    pieces = record_fields(model, data, window=window, warmup=warmup, key=key)
    if cnn:
        return _not_modelled(pieces, data.active)
    return run_fields(data, pieces["Kh"], pieces["rs"], exchange=model.exchange, fallback=fallback,
                      rs_vpd_d0=model.rs_vpd_d0)


def run_fields(data: RegionData, kh, rs, *, exchange: str = "field", fallback=None, state0=None,
               rs_vpd_d0: float | None = None) -> dict:
    """The gridded physics of ``data`` run through given (T, N) fields in the closed loop, as a
    hybrid predicts with its network's fields (``predict_regional``; any fields: a truth's, or one
    model's K_h with another's r_s). ``kh``: K_h [m2 s-1] (``exchange="field"``) or a multiplier
    of the physics' own K_h (``"scale"``); ``rs``: r_s [s m-1], raised by the physics with the
    vapour-pressure deficit when ``rs_vpd_d0`` is given (:class:`RegionalHybrid`). ``state0``: the
    state at the record's start (default the physics' initial state, as ``predict_regional`` starts).
    The outputs as ``predict_regional``'s (``recomputed``, ``closed_loop``; ``fallback`` as there)."""
    # the closed loop (models.regional_loop): a step above the 10 W m-2 residual is recomputed with
    # the fields pulled toward the physics' own K_h; inside every attempt the step refines its
    # sub-steps as physics models predict (PREDICT_REFINEMENTS): without it, 5 steps of the virtual
    # region stayed above 10 W m-2 at high wind, which the pull made worse (docs/results.md)
    physics = replace(regional_physics(data, land=LaDModel(rs_vpd_d0=rs_vpd_d0)), max_refinements=PREDICT_REFINEMENTS)
    field = EXCHANGE_FIELDS[exchange]
    kh, rs = jnp.asarray(kh, data.variables.dtype), jnp.asarray(rs, data.variables.dtype)
    _, out, report = _closed_loop(physics, data.params, data.forcing, kh, rs, state0, exchange=field,
                                  run_time=data.run_time, fallback=fallback)
    out = {k: np.asarray(v) for k, v in out.items()}
    if fallback is not None:
        masks = np.stack([np.asarray(fallback.kh_mask), np.asarray(fallback.rs_mask)])
        out[FALLBACK_OUTPUT] = np.mean(masks, axis=0).astype(out["Qh"].dtype)
    out["closed_loop"] = report.summary()
    return _not_modelled(out, data.active)


def field_spread(model: RegionalHybrid, data: RegionData, *, window: int = 48, warmup: int = 12,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The network's epistemic spread of its fields: the SD of log K_h (or of its multiplier) and
    of log r_s over ``FALLBACK_SAMPLES`` dropout passes of the network alone (no physics), (T, N)
    each; the same passes for a given ``seed``."""
    keys = jax.random.split(jax.random.fold_in(jax.random.key(MC_KEY), seed), FALLBACK_SAMPLES)
    logs = {"Kh": [], "rs": []}
    for key in keys:
        fields = record_fields(model, data, window=window, warmup=warmup, key=key)
        for name in logs:
            logs[name].append(np.log(np.asarray(fields[name], np.float64)))
    return tuple(np.std(np.stack(logs[name]), axis=0, ddof=1) for name in ("Kh", "rs"))


def epistemic_fallback(model: RegionalHybrid, data: RegionData, threshold: float, *, window: int = 48,
                       warmup: int = 12, seed: int = 0, spread=None, reference: dict | None = None) -> Fallback:
    """Where a hybrid's network is unsure, as the column hybrids' fallback (``models.hybrid``): a
    ``Fallback`` whose (T, N) masks are True in the modelled cells where the field's spread
    (``field_spread``, or ``spread`` when the caller has it) exceeds ``threshold``, and whose values
    are the physics' own (``reference`` None) or each cell's class values of ``reference``
    (``class_reference``). Computed once per prediction: every MC-dropout run of that prediction
    falls back in the same cell-steps. ``predict_regional(..., fallback=...)`` runs it."""
    if not threshold > 0:
        raise ValueError(f"epistemic_fallback: threshold {threshold!r}; expected > 0 (an SD of a log field)")
    if spread is None:
        spread = field_spread(model, data, window=window, warmup=warmup, seed=seed)
    kh_mask, rs_mask = ((sd > threshold) & data.active[None] for sd in spread)
    if reference is None:
        return Fallback(kh_mask, rs_mask)
    return Fallback(kh_mask, rs_mask, *reference_values(reference, data))


def class_reference(model: RegionalHybrid, data: RegionData, steps, *, window: int = 48,
                    warmup: int = 12) -> dict[str, tuple[float, float]]:
    """The calibrated physics a hybrid can fall back to: for each land-cover class of ``data``'s
    modelled cells, the geometric means of the network's two fields (K_h or its multiplier, r_s;
    deterministic, ``record_fields``) over the class's cells and the ``steps`` ((T,) bool, the
    training steps): {class: (K_h, r_s)}. The physics' K_h law times a constant per class and one
    r_s per class, both learned by the hybrid itself, where the physics' own defaults may be far
    from what the data say (docs/results.md, the regional fallback)."""
    steps = np.asarray(steps, bool)
    if steps.shape != (data.n_steps,) or not steps.any():
        raise ValueError(f"class_reference: steps of shape {steps.shape} with {int(steps.sum())} set; expected "
                         f"({data.n_steps},) bool with at least one step")
    fields = record_fields(model, data, window=window, warmup=warmup)
    logs = {name: np.log(np.asarray(fields[name], np.float64)[steps]) for name in ("Kh", "rs")}
    reference = {}
    for index in np.unique(data.cell_class[data.active]):
        cells = (data.cell_class == index) & data.active
        reference[data.classes[index]] = tuple(float(np.exp(np.mean(logs[name][:, cells]))) for name in ("Kh", "rs"))
    return reference


def reference_values(reference: dict[str, tuple[float, float]], data: RegionData) -> tuple[np.ndarray, np.ndarray]:
    """(K_h, r_s), (N,) each: every cell's class values of a ``class_reference``, so that the
    reference of a trained model applies to any grid. A modelled cell of a class the reference
    lacks (the model trained on a grid without it) gets NaN, which the closed loop reads as the
    physics' own value (``Fallback``), with a ``DataWarning`` naming the classes."""
    modelled = sorted({data.classes[i] for i in np.unique(data.cell_class[data.active])})
    missing = [c for c in modelled if c not in reference]
    if missing:
        warnings.warn(f"the epistemic fallback's class reference holds {sorted(reference)}; cells of {missing} fall "
                      "back to the physics' own fields instead (the model's training grid had none of them)",
                      DataWarning, stacklevel=3)
    table = np.array([reference.get(c, (np.nan, np.nan)) for c in data.classes], np.float64).reshape(-1, 2)
    values = table[data.cell_class]
    dtype = data.variables.dtype
    return values[:, 0].astype(dtype), values[:, 1].astype(dtype)


def record_fields(model, data: RegionData, *, window: int = 48, warmup: int = 12, key=None) -> dict[str, np.ndarray]:
    """A network's outputs over the whole record as (T, N) arrays, window by window (each window's
    outputs kept after its warm-up, the first window's from its start; a record shorter than
    ``window`` is one window): ``Kh`` (or its multiplier) and ``rs`` of a :class:`RegionalHybrid`,
    ``Qh`` and ``Qle`` of a :class:`CNNLSTM`."""
    cnn = isinstance(model, CNNLSTM)
    names = ("Qh", "Qle") if cnn else ("Kh", "rs")
    net = _cnn_outputs if cnn else _hybrid_fields
    pieces = {k: np.zeros((data.n_steps, data.forcing.n_sites), data.variables.dtype) for k in names}
    done = 0
    # a record shorter than the window has no window of that length: before, it got no outputs
    # (zero fields, which the closed loop clipped to their bounds)
    for start in window_starts(data.n_steps, window, warmup) or [0]:
        pred = net(model, jnp.asarray(data.variables[:, start : start + window]), jnp.asarray(data.static), key)
        for k in names:
            pieces[k][done : start + window] = np.asarray(pred[k])[done - start :]
        done = start + window
    return pieces


# compiled once per model structure and shape, so that repeated predictions (MC-dropout passes,
# several grids) reuse the program; the record goes in as arguments (arrays a jitted function closes
# over become constants of the compiled program: slower to compile, held twice); the physics of a
# grid for run time (XLA's CPU fusion emitters, ``physics.run_time_jit``)
_physics_run = run_time_jit(lambda model, params, forcing: rollout(model, params, forcing, chunk=None))
_cnn_outputs = eqx.filter_jit(lambda model, variables, static, key: model.predict(variables, static, key))
_hybrid_fields = eqx.filter_jit(lambda model, variables, static, key: dict(zip(("Kh", "rs"),
                                                                                model.fields(variables, static, key))))
_closed_loop = run_time_jit(closed_loop)


def _not_modelled(out: dict, active: np.ndarray) -> dict:
    """``out``'s (T, N) arrays with NaN in the cells that are not columns (nothing is estimated there)."""
    if active.all():
        return out
    def blank(v):
        v = np.asarray(v)
        v = v if v.dtype.kind == "f" else v.astype(float)
        return np.where(active, v, np.asarray(np.nan, v.dtype))

    return {k: blank(v) if np.ndim(v) == 2 else v for k, v in out.items()}


#: the fields whose MC-dropout spread a regional prediction reports
MC_FIELDS = ("Qh", "Qle", "AvgSurfT", "Kh", "rs_field")
#: downward shortwave above which a step counts as day for the residual SD [W m-2]
DAY_SWDOWN = 1.0


def _daytime(data: RegionData) -> np.ndarray:
    """(T, N) bool: the steps and cells of day (``DAY_SWDOWN``), as the residual SD splits them."""
    return np.asarray(data.forcing.column.sw_down) > DAY_SWDOWN


def residual_sd(out: dict, data: RegionData, steps: np.ndarray, targets=TARGETS) -> dict[str, dict]:
    """The residual part of the predictive SD of each target, from a prediction's misfit to what is
    observed at the ``steps`` (a (T,) mask: the validation steps, never the test's): the RMS of
    observed minus predicted, by day and by night (``DAY_SWDOWN``), since midday errors are several
    times the night's. It stands for what MC dropout does not see: observation noise and the
    structural error of the physics with the learned fields (seed 002's aleatoric part, plus
    model error). ``{name: {"day": sd, "night": sd, "n_day": n, "n_night": n}}`` for each target
    observed there (a part with no observation takes the other's SD); targets not observed are left
    out."""
    day = _daytime(data)
    table = {}
    for name in targets:
        if name not in out or name not in data.observed:
            continue
        obs, pred = np.asarray(data.observed[name], np.float64), np.asarray(out[name], np.float64)
        seen = np.isfinite(obs) & np.isfinite(pred) & np.asarray(steps, bool)[:, None] & data.active[None]
        parts = {}
        for part, where in (("day", seen & day), ("night", seen & ~day)):
            parts[f"n_{part}"] = int(where.sum())
            parts[part] = float(np.sqrt(np.mean((obs[where] - pred[where]) ** 2))) if where.any() else None
        if parts["day"] is None and parts["night"] is None:
            continue
        parts["day"] = parts["night"] if parts["day"] is None else parts["day"]
        parts["night"] = parts["day"] if parts["night"] is None else parts["night"]
        table[name] = parts
    return table


def with_residual_sd(out: dict, table: dict, data: RegionData) -> dict:
    """``out`` with the predictive SD of each target of ``table`` (``residual_sd``) and its parts:
    ``<name>_sd_aleatoric`` the residual SD of the step's part of the day, ``<name>_sd_epistemic``
    the MC-dropout SD (``<name>_sd`` of ``out`` where it has one, else 0), and ``<name>_sd`` the
    total, their root sum of squares (law of total variance)."""
    day = _daytime(data)
    out = dict(out)
    for name, parts in table.items():
        if name not in out:
            continue
        aleatoric = np.where(day, parts["day"], parts["night"]).astype(np.asarray(out[name]).dtype)
        epistemic = np.asarray(out.get(f"{name}_sd", np.zeros_like(aleatoric)))
        out[f"{name}_sd_aleatoric"], out[f"{name}_sd_epistemic"] = aleatoric, epistemic
        out[f"{name}_sd"] = np.sqrt(epistemic**2 + aleatoric**2)
    return _not_modelled(out, data.active)


def mc_dropout_regional(model, data: RegionData, samples: int = 50, seed: int = 0, fields=MC_FIELDS, *,
                        window: int = 48, warmup: int = 12, fallback=None) -> dict[str, dict[str, np.ndarray]]:
    """``samples`` stochastic passes of ``predict_regional`` (dropout on, one key each; ``fallback``
    passed to each):
    {field: {"mean": (T, N), "sd": (T, N)}} for the ``fields`` a pass gives (None: every (T, N)
    output; SD with ddof 1; Welford's running sums, so memory does not grow with ``samples``)."""
    if samples < 2:
        raise ValueError(f"mc_dropout_regional: needs at least 2 samples, got {samples}")
    keys = jax.random.split(jax.random.key(seed), samples)
    count, mean, m2 = 0, {}, {}
    for key in keys:
        out = predict_regional(model, data, window=window, warmup=warmup, key=key, fallback=fallback)
        count += 1
        for name in (fields if fields is not None else [k for k, v in out.items() if np.ndim(v) == 2]):
            if name not in out:
                continue
            x = np.asarray(out[name], np.float64)
            if name not in mean:
                mean[name], m2[name] = np.zeros_like(x), np.zeros_like(x)
            delta = x - mean[name]
            mean[name] += delta / count
            m2[name] += delta * (x - mean[name])
    return {name: {"mean": mean[name], "sd": np.sqrt(m2[name] / (count - 1))} for name in mean}
