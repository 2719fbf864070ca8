"""The virtual region: a gridded twin with known K_h laws and r_s per land-cover class (issue 15).

A 32 x 32 grid of 1 km cells (any size) in the manner of seed 000's agricultural-urban fringe:
farmland around an urban core, a ring of mixed cells between them (the heterogeneous fringe), a
forest on hills in the north-west, a lake in the south-west and a bare patch in the south-east.
Each class has its own true exchange law K_h = a u^b |Ri|^c (separate stable and unstable
branches, ``physics.exchange``) and its own surface resistance r_s (times a VPD response), albedo
and LaD parameters. The forcing is a real site's (read from ``../shared/data``, gap-filled and
flagged by ``prepare_forcing``, averaged to hourly), spread over the grid with an elevation field:
air temperature by the standard lapse rate, pressure hydrostatically, humidity capped below
saturation, longwave with the temperature. The wind is the site's speed with a slowly turning
direction, uniform over the grid (so the wind does not converge).

The truth is the package's regional physics (``physics.regional.RegionalModel``: LaD columns under
the finite-volume air layer) with the class laws as the columns' exchange and the class r_s
prescribed, spun up over the first days. Observations: Qh and Qle at a few "tower" cells (noise
and gaps as towers have), and a full-field surface temperature product at four satellite overpass
hours with cloud gaps. The true fields (Qh, Qle, AvgSurfT, Kh, rs) are kept as ``<name>_true``.

A second virtual region, ``virtual_region_from_grid``, takes its class map and its (real, spatially
varying) forcing from a gridded file such as the Little Washita NLDAS-2 grid: each IGBP class of
the map gets a law of GRID_CLASSES, the truth and the observations are made as above, and the
spin-up (the first day repeated) is part of the dataset, flagged ``spin_up``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from .. import thermo
from ..constants import GRAVITY, R_DRY
from .gridded import grid_axis_signs
from .schema import IGBP_BY_INDEX, DataError

#: class -> (IGBP code of the land-cover map, IGBP code for the LaD defaults, albedo, r_s [s m-1],
#: stable (a, b, c), unstable (a, b, c)). Rougher classes exchange more (forest > urban > farmland >
#: bare > water); r_s ranks bare > urban > forest > farmland > water.
REGION_CLASSES = {
    "water": ("WAT", "WAT", 0.07, 100.0, (0.002, 1.1, -0.30), (0.03, 0.9, 0.20)),
    "bare": ("BSV", "BSV", 0.30, 2500.0, (0.003, 1.2, -0.30), (0.05, 0.9, 0.25)),
    "forest": ("DBF", "DBF", 0.14, 180.0, (0.03, 1.1, -0.25), (0.4, 0.85, 0.20)),
    "farmland": ("CRO", "CRO", 0.20, 120.0, (0.005, 1.23, -0.32), (0.1, 0.9, 0.25)),
    "urban": ("URB", "URB", 0.15, 1500.0, (0.02, 1.0, -0.20), (0.3, 0.8, 0.30)),
}
CLASS_NAMES = tuple(REGION_CLASSES)


#: r_s of every class rises with the vapour-pressure deficit: r_s (1 + RS_VPD_GAIN VPD[kPa])
RS_VPD_GAIN = 0.5
RS_BOUNDS = (1e2, 1e4)  # the range of seed 000's bounded head
#: the albedo product's range: inside the open bounds (0.03, 0.6) of LaD's albedo parameter
ALBEDO_PRODUCT_RANGE = (0.035, 0.595)
#: SD of the default albedo product's noise about the truth's class albedo (``virtual_region``)
ALBEDO_NOISE = 0.02
LAPSE_RATE = 0.0065  # K m-1
OVERPASS_HOURS = (1, 10, 13, 22)  # local: night and day overpasses of two polar orbiters
DEFAULT_SITE = "US-CRT_201101-201112_HH.csv"
#: the forcing variables of a region, in order
FORCING_NAMES = ("Tair", "Qair", "Psurf", "Wind", "Wind_E", "Wind_N", "SWdown", "LWdown", "Precip")


def class_map(ny: int = 32, nx: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(class index (ny, nx) into CLASS_NAMES, fringe mask, homogeneous-farmland mask). Row 0 is
    the south. Farmland everywhere, an urban disc east of centre, a ring of mixed cells around it
    (the fringe), forest in the north-west, a lake in the south-west, a bare patch in the south-east.
    Homogeneous farmland: farmland cells whose 5 x 5 neighbourhood is all farmland."""
    rng = np.random.default_rng(seed)
    y, x = np.meshgrid(np.arange(ny) + 0.5, np.arange(nx) + 0.5, indexing="ij")
    sy, sx = ny / 32.0, nx / 32.0
    idx = {name: i for i, name in enumerate(CLASS_NAMES)}
    cls = np.full((ny, nx), idx["farmland"])
    r_urban = np.hypot((x - 23 * sx) / sx, (y - 16 * sy) / sy)
    edge = 3.0 * np.sin(x / (3 * sx)) + 2.0 * np.cos(y / (4 * sy))  # an irregular forest edge
    cls[(y / sy > 22 + edge * 0.5) & (x / sx < 12 + edge)] = idx["forest"]
    cls[np.hypot((x - 7 * sx) / sx, (y - 7 * sy) / sy) < 3.5] = idx["water"]
    cls[(y / sy < 5) & (x / sx > 26)] = idx["bare"]
    cls[r_urban < 5.0] = idx["urban"]
    fringe = (r_urban >= 5.0) & (r_urban < 9.0)
    mixed = rng.choice([idx["urban"], idx["farmland"], idx["bare"], idx["forest"]], size=(ny, nx),
                       p=[0.35, 0.35, 0.15, 0.15])
    cls = np.where(fringe, mixed, cls)
    farm = np.pad(cls == idx["farmland"], 2, mode="edge")
    window = np.lib.stride_tricks.sliding_window_view(farm, (5, 5)).all(axis=(-1, -2))
    return cls, fringe, window & ~fringe


def class_albedo(cls: np.ndarray) -> np.ndarray:
    """The truth's albedo of each cell: its class's (REGION_CLASSES), for an array of class indices."""
    table = np.array([REGION_CLASSES[name][2] for name in CLASS_NAMES])
    return table[np.asarray(cls)]


def elevation_field(ny: int, nx: int, seed: int = 0) -> np.ndarray:
    """Elevation [m]: 150 m plain rising to ~400 m hills in the north-west, with smooth relief."""
    rng = np.random.default_rng(seed + 7)
    y, x = np.meshgrid(np.arange(ny) / max(ny - 1, 1), np.arange(nx) / max(nx - 1, 1), indexing="ij")
    hills = 250.0 * np.clip(y - x + 0.3, 0.0, None) ** 1.5
    relief = sum(rng.uniform(5, 15) * np.sin(2 * np.pi * (k * x + rng.uniform()) + 2 * np.pi * k * y * rng.uniform())
                 for k in (1, 2, 3))
    return 150.0 + hills + relief


def site_forcing(path: Path, start: str, days: int) -> xr.Dataset:
    """A site's forcing over ``days`` from ``start``: gap-filled over the whole record
    (``prepare_forcing``, every repair flagged and reported), averaged to hourly."""
    from .preprocess import prepare_forcing
    from .readers import read_site

    ds = prepare_forcing(read_site(path))  # the whole record: its diurnal cycles fill long gaps
    t0 = np.datetime64(start)
    window = ds.sel(time=slice(t0, t0 + np.timedelta64(days, "D") - np.timedelta64(1, "s")))
    expected = int(days * 86400 / ds.attrs["time_step_s"])
    if window.sizes["time"] != expected:
        raise DataError(f"{path}: {days} days from {start} need {expected} steps; the record has "
                        f"{window.sizes['time']} (it covers {str(ds.time.values[0])[:10]} to {str(ds.time.values[-1])[:10]})")
    names = ["Tair", "Qair", "Psurf", "Wind", "SWdown", "LWdown", "Precip"]
    hourly = window[names].resample(time="1h").mean()
    hourly.attrs = {**window.attrs, "time_step_s": 3600}
    return hourly


def _wind_direction(n_steps: int, seed: int) -> np.ndarray:
    """A slowly turning wind direction [rad, toward which the wind blows]: westerly on average,
    veering by up to ~90 degrees over synoptic periods of a few days."""
    rng = np.random.default_rng(seed + 3)
    t = np.arange(n_steps) / 24.0
    return 0.6 * np.sin(2 * np.pi * t / 4.5 + rng.uniform(0, 6)) + 0.4 * np.sin(2 * np.pi * t / 1.7)


def virtual_region(ny: int = 32, nx: int = 32, days: int = 30, *, site: Path | str | None = None,
                   start: str = "2011-06-01", spin_up_days: int = 5, seed: int = 0, towers=None,
                   flux_noise: float = 10.0, flux_gap_fraction: float = 0.1, lst_noise: float = 0.5,
                   cloud_fraction: float = 0.3, cell_size: float = 1000.0,
                   albedo_noise: float | None = ALBEDO_NOISE) -> xr.Dataset:
    """The virtual region (module docstring) as a gridded canonical dataset on (time, y, x).

    Forcing: Tair, Qair, Psurf, Wind, Wind_E, Wind_N, SWdown, LWdown, Precip. Static: land_cover
    (IGBP index, CF flag_meanings), surface_class (index into CLASS_NAMES), fringe, homogeneous,
    tower (bool), elevation. Observations: Qh, Qle (at tower cells, NaN elsewhere and in gaps),
    AvgSurfT (overpass hours, cloud gaps). Truth: Qh_true, Qle_true, AvgSurfT_true, Kh_true,
    rs_true, Tair_layer_true and the columns' Rnet_true, Qg_true, Qf_true (Rn = H + LE + G + Q_f).
    ``spin_up`` (time): all False (the spin-up days are run before the record and dropped).
    ``Albedo`` (y, x): a satellite-like surface albedo product (as MODIS gives a real region), the
    truth's class albedo plus Gaussian noise of SD ``albedo_noise`` (ALBEDO_NOISE), within
    ALBEDO_PRODUCT_RANGE; the models run it instead of LaD's class default (``models.regional.region_data``,
    a Domain's static ``albedo``). ``albedo_noise=None``: no product (the models run LaD's class albedo,
    which differs from the truth's: a structural error left for them to absorb).

    ``site``: a FLUXNET-style CSV with forcing (default: US-CRT 2011 cropland in
    ``../shared/data/fluxnet``); a DataError names it when absent. ``towers``: (row, col) cells
    with flux observations; default four: interior farmland, fringe, forest and urban.
    """
    path = Path(site) if site is not None else Path(__file__).resolve().parents[4] / "shared" / "data" / "fluxnet" / DEFAULT_SITE
    if not path.exists():
        raise DataError(f"virtual region: the forcing site file {path} does not exist (../shared/data beside the repository)")
    total_days = days + spin_up_days
    start_spin = str(np.datetime64(start) - np.timedelta64(spin_up_days, "D"))
    met = site_forcing(path, start_spin, total_days)
    n_steps = met.sizes["time"]
    cls, fringe, homogeneous = class_map(ny, nx, seed)
    elevation = elevation_field(ny, nx, seed)
    z_site = float(met.attrs.get("elevation", np.nan))
    z_site = float(np.mean(elevation)) if not np.isfinite(z_site) else z_site
    dz = (elevation - z_site)[None]

    def field(name):
        return np.asarray(met[name].values)[:, None, None] * np.ones((1, ny, nx))

    tair = field("Tair") - LAPSE_RATE * dz
    psurf = field("Psurf") * np.exp(-GRAVITY * dz / (R_DRY * 0.5 * (field("Tair") + tair)))
    qair = np.minimum(field("Qair"), 0.95 * thermo.saturation_specific_humidity(tair, psurf))
    lwdown = field("LWdown") * (tair / field("Tair")) ** 4
    speed = field("Wind")
    direction = _wind_direction(n_steps, seed)[:, None, None]
    values = (tair, qair, psurf, speed, speed * np.cos(direction), speed * np.sin(direction), field("SWdown"),
              lwdown, field("Precip"))
    units = ("K", "kg kg-1", "Pa", "m s-1", "m s-1", "m s-1", "W m-2", "W m-2", "kg m-2 s-1")
    dims = ("time", "y", "x")
    coords = {"time": met.time.values, "y": (np.arange(ny) + 0.5) * cell_size, "x": (np.arange(nx) + 0.5) * cell_size}
    ds = xr.Dataset({n: (dims, v, {"units": u}) for n, v, u in zip(FORCING_NAMES, values, units)}, coords=coords)

    # the truth: regional physics with the class laws and r_s, spun up over the first days
    specs = [REGION_CLASSES[c] for c in CLASS_NAMES]
    spin = spin_up_days * 24
    truth = _class_truth(ds, cls, specs, cell_size, spin=spin, spin_cycles=2)
    ds = ds.isel(time=slice(spin, None))
    for name, (value, attrs) in truth.items():
        ds[name] = (dims, value, attrs)

    # observations
    rng = np.random.default_rng(seed + 11)
    if towers is None:
        towers = _default_towers(cls, fringe, homogeneous)
    tower = _observe(ds, towers, rng, flux_noise=flux_noise, flux_gap_fraction=flux_gap_fraction,
                     lst_noise=lst_noise, cloud_fraction=cloud_fraction)
    codes = np.array([IGBP_BY_INDEX.index(REGION_CLASSES[CLASS_NAMES[c]][0]) + 1 for c in cls.reshape(-1)])
    _static_fields(ds, codes.reshape(ny, nx), cls, CLASS_NAMES, fringe, homogeneous, tower)
    ds["elevation"] = (("y", "x"), elevation, {"units": "m"})
    if albedo_noise is not None:
        if not (albedo_noise >= 0.0 and np.isfinite(albedo_noise)):
            raise ValueError(f"virtual region: albedo_noise {albedo_noise!r}; expected an SD >= 0")
        true = class_albedo(cls)
        noisy = true + np.random.default_rng(seed + 13).normal(0.0, albedo_noise, true.shape)
        ds["Albedo"] = (("y", "x"), np.clip(noisy, *ALBEDO_PRODUCT_RANGE), {
            "units": "1", "long_name": "surface albedo product",
            "comment": f"the truth's class albedo plus Gaussian noise of SD {albedo_noise:g}, within "
                       f"[{ALBEDO_PRODUCT_RANGE[0]:g}, {ALBEDO_PRODUCT_RANGE[1]:g}]"})
    ds["spin_up"] = (("time",), np.zeros(ds.sizes["time"], bool), {
        "long_name": "spin-up step (not to be scored)",
        "comment": f"none here: the {spin_up_days} spin-up days before the record are run and dropped"})
    ds.attrs.update({
        "site_id": "VIRTUAL-REGION", "site_name": f"virtual region {ny}x{nx} (seed {seed})",
        "latitude": float(met.attrs["latitude"]), "longitude": float(met.attrs["longitude"]),
        "utc_offset_h": float(met.attrs.get("utc_offset_h", 0.0)), "time_step_s": 3600,
        "cell_size_m": cell_size, "forcing_site": str(path.name), "source_format": "virtual-region",
        "truth": _truth_note(REGION_CLASSES),
        "repairs": met.attrs.get("repairs", ""), "fill_report": met.attrs.get("fill_report", ""),
        "boundary": "open", "spin_up_days": spin_up_days,
    })
    return ds


def _truth_note(table: dict) -> str:
    """The ``truth`` attribute: each class's r_s and K_h branches."""
    return "; ".join(f"{k}: r_s {v[3]:g} x (1 + {RS_VPD_GAIN} VPD), K_h stable {v[4]}, unstable {v[5]}"
                     for k, v in table.items())


def _class_truth(ds: xr.Dataset, cover: np.ndarray, specs, cell_size: float, *, spin: int = 0,
                 spin_cycles: int = 2) -> dict:
    """The truth of a region: ``physics.regional.RegionalModel`` (open boundaries) over the forcing
    of ``ds`` (time, y, x; Tair, Qair, Psurf, Wind, Wind_E, Wind_N, SWdown, LWdown, Precip), every
    cell with the K_h law, r_s (times the VPD response, bounded to RS_BOUNDS), albedo and LaD
    defaults of its class. ``cover``: (ny, nx) index into ``specs``, tuples laid out as
    REGION_CLASSES' values; water columns (WAT) are open water (``physics.OPEN_WATER_PARAMETERS``, given by
    ``default_params``), as in the regional models. The state starts
    from ``spin_up`` cycling the first ``spin`` steps (at most ``spin_cycles`` times; none when
    ``spin`` is 0) and the outputs cover the steps after them.

    Returns ``<name>_true`` -> ((T - spin, ny, nx) array, attrs) for Qh, Qle, AvgSurfT, Kh, rs,
    Tair_layer, Qf and the columns' energy terms Rnet and Qg (so closure can be checked)."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from ..physics import default_params, forcing_from_datasets, rollout, spin_up
    from ..physics.air_layer import AirLayer
    from ..physics.exchange import ClassExchangeLaw, ExchangeLaw
    from ..physics.lad import LaDModel
    from ..physics.regional import GridForcing, RegionalModel

    n_steps, ny, nx = ds.sizes["time"], ds.sizes["y"], ds.sizes["x"]
    n = ny * nx
    flat = np.asarray(cover).reshape(-1)
    spec = [specs[c] for c in flat]
    lad_codes = [s[1] for s in spec]
    overrides = {"albedo": np.array([s[2] for s in spec])}  # WAT columns: open water (default_params)
    dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    params = default_params(lad_codes, overrides=overrides, dtype=dtype)
    grid = ds[list(FORCING_NAMES)].stack(column=("y", "x")).transpose("time", "column")
    column_forcing = forcing_from_datasets([grid.assign_attrs(time_step_s=3600.0)], dtype=dtype)
    as_cols = lambda a: jnp.asarray(np.reshape(np.asarray(a), (n_steps, n)), dtype)  # noqa: E731
    east, north = grid_axis_signs(ds)  # the air layer advects along increasing index
    gf = GridForcing(column_forcing, as_cols(east * ds["Wind_E"].values), as_cols(north * ds["Wind_N"].values))
    tair, qair, psurf = (np.asarray(ds[v].values, float) for v in ("Tair", "Qair", "Psurf"))
    vpd_kpa = (thermo.saturation_vapour_pressure(tair) - thermo.vapour_pressure_from_specific_humidity(qair, psurf)) / 1000.0
    rs_class = np.array([s[3] for s in spec]).reshape(ny, nx)
    rs_true = np.clip(rs_class[None] * (1.0 + RS_VPD_GAIN * np.maximum(vpd_kpa, 0.0)), *RS_BOUNDS)
    laws = tuple(ExchangeLaw({"stable": s[4], "unstable": s[5]}, dtype) for s in specs)
    land = LaDModel(exchange_law=ClassExchangeLaw(laws, jnp.asarray(flat)))
    model = RegionalModel(AirLayer((ny, nx), dx=cell_size, dy=cell_size, boundary="open"), land=land).for_forcing(gf)
    rs = as_cols(rs_true)
    state0 = None
    if spin:
        state0, _ = spin_up(model, params, gf.at(slice(0, spin)), dynamic={"rs": rs[:spin]}, max_cycles=spin_cycles)
    run = eqx.filter_jit(lambda m, p, f, s, d: rollout(m, p, f, s, dynamic=d))  # arrays as arguments
    _, out = run(model, params, gf.at(slice(spin, None)), state0, {"rs": rs[spin:]})
    t = n_steps - spin
    units = {"Qh": "W m-2", "Qle": "W m-2", "AvgSurfT": "K", "Kh": "m2 s-1", "rs": "s m-1", "Tair_layer": "K",
             "Rnet": "W m-2", "Qg": "W m-2", "Qf": "W m-2"}
    truth = {}
    for name, unit in units.items():
        value = np.asarray(out[name]).reshape(t, ny, nx) if name != "rs" else rs_true[spin:]
        truth[f"{name}_true"] = (value, {"units": unit, "long_name": f"true {name} (regional physics, class laws)"})
    return truth


def _observe(ds: xr.Dataset, towers, rng: np.random.Generator, *, flux_noise: float, flux_gap_fraction: float,
             lst_noise: float, cloud_fraction: float, hidden: np.ndarray | None = None) -> np.ndarray:
    """Add the observations of the truth to ``ds`` (in place): Qh and Qle at the ``towers`` cells
    (truth + Gaussian noise of ``flux_noise``, gaps of up to 12 h until ``flux_gap_fraction`` is
    missing), AvgSurfT over the whole grid at the OVERPASS_HOURS (local) with cloud gaps covering
    ``cloud_fraction`` and noise ``lst_noise``; NaN elsewhere and at the ``hidden`` (T,) steps.
    Returns the (ny, nx) tower mask."""
    from .virtual import tower_gaps

    t, ny, nx = ds.sizes["time"], ds.sizes["y"], ds.sizes["x"]
    dims = ("time", "y", "x")
    hidden = np.zeros(t, bool) if hidden is None else np.asarray(hidden, bool)
    tower = np.zeros((ny, nx), bool)
    for r, c in towers:
        tower[r, c] = True
    for name in ("Qh", "Qle"):
        obs = np.full((t, ny, nx), np.nan)
        for r, c in towers:
            series = ds[f"{name}_true"].values[:, r, c] + rng.normal(0.0, flux_noise, t)
            obs[:, r, c] = np.where(tower_gaps(t, flux_gap_fraction, rng, max_length=12), np.nan, series)
        obs[hidden] = np.nan
        ds[name] = (dims, obs, {"units": "W m-2", "source": "virtual towers: truth + noise, with gaps"})
    hours = ds.time.dt.hour.values
    overpass = np.isin(hours, OVERPASS_HOURS) & ~hidden
    clouds = _cloud_field(t, ny, nx, rng) < cloud_fraction
    lst = ds["AvgSurfT_true"].values + rng.normal(0.0, lst_noise, (t, ny, nx))
    ds["AvgSurfT"] = (dims, np.where(overpass[:, None, None] & ~clouds, lst, np.nan),
                      {"units": "K", "source": "virtual satellite surface temperature: overpasses, cloud gaps"})
    return tower


def _static_fields(ds: xr.Dataset, codes: np.ndarray, cls: np.ndarray, class_names, fringe: np.ndarray,
                   homogeneous: np.ndarray, tower: np.ndarray) -> None:
    """Add the static maps (in place): land_cover (IGBP index, codes as flag_meanings, the form
    ``models.regional.region_data`` reads), surface_class (index into ``class_names``), fringe,
    homogeneous, tower."""
    ds["land_cover"] = (("y", "x"), np.asarray(codes).astype(np.int16), {
        "flag_values": np.arange(1, len(IGBP_BY_INDEX) + 1, dtype=np.int16), "flag_meanings": " ".join(IGBP_BY_INDEX)})
    ds["surface_class"] = (("y", "x"), np.asarray(cls).astype(np.int16), {
        "flag_values": np.arange(len(class_names)), "flag_meanings": " ".join(class_names)})
    ds["fringe"] = (("y", "x"), fringe)
    ds["homogeneous"] = (("y", "x"), homogeneous)
    ds["tower"] = (("y", "x"), tower)


def _central_cell(mask: np.ndarray) -> tuple[int, int] | None:
    """The cell of ``mask`` nearest its centroid (the first in row-major order on a tie); None
    when the mask is empty."""
    cells = np.argwhere(mask)
    if len(cells) == 0:
        return None
    r, c = cells[np.argmin(np.hypot(*(cells - cells.mean(axis=0)).T))]
    return int(r), int(c)


def _default_towers(cls, fringe, homogeneous) -> list[tuple[int, int]]:
    """One tower each in homogeneous farmland, the fringe, the forest and the urban core (the
    cell nearest each one's centroid)."""
    masks = (homogeneous, fringe & (cls == CLASS_NAMES.index("farmland")), cls == CLASS_NAMES.index("forest"),
             (cls == CLASS_NAMES.index("urban")) & ~fringe)
    return [cell for cell in map(_central_cell, masks) if cell is not None]


def every_class_towers(ny: int = 32, nx: int = 32, seed: int = 0) -> list[tuple[int, int]]:
    """The default towers of :func:`virtual_region` and one more in each class they leave
    unobserved (on the default map: the lake and the bare patch), at the cell nearest the centroid
    of the class's cells outside the fringe (of all its cells when every one is in the fringe)."""
    cls, fringe, homogeneous = class_map(ny, nx, seed)
    towers = _default_towers(cls, fringe, homogeneous)
    observed = {int(cls[r, c]) for r, c in towers}
    for i in range(len(CLASS_NAMES)):
        if i in observed or not (cls == i).any():
            continue
        core = (cls == i) & ~fringe
        towers.append(_central_cell(core if core.any() else cls == i))
    return towers


def _cloud_field(t: int, ny: int, nx: int, rng: np.random.Generator) -> np.ndarray:
    """(t, ny, nx) in [0, 1): smooth cloud patterns that drift with time (a random field of a few
    plane waves per step, ranked to uniform so that ``< fraction`` covers that fraction)."""
    y, x = np.meshgrid(np.arange(ny) / 8.0, np.arange(nx) / 8.0, indexing="ij")
    k = rng.normal(0.0, 1.0, (4, 2))
    phase = rng.uniform(0, 2 * np.pi, 4)
    speed = rng.normal(0.0, 0.3, 4)
    steps = np.arange(t)[:, None, None]
    field = sum(np.sin(k[i, 0] * x + k[i, 1] * y + phase[i] + speed[i] * steps) for i in range(4))
    ranks = field.reshape(t, -1).argsort(axis=1).argsort(axis=1) / (ny * nx)
    return ranks.reshape(t, ny, nx)


# --- the second virtual region: spatial structure and forcing from a real grid -------------------

#: the laws of a grid's land-cover classes, laid out as REGION_CLASSES (IGBP code of the map first),
#: for ``virtual_region_from_grid``. The classes of REGION_CLASSES keep their laws; the deciduous
#: needleleaf forest takes the forest's law, albedo and r_s (a tall, rough canopy; LaD's DNF
#: defaults), savanna and grassland get new ones. K_h follows roughness: forest (z0 ~ 1 m) > savanna
#: (scattered trees) > farmland (crops) > grassland (short grass) > bare, in both branches (the
#: prefactor a roughly halves from one class to the next; exponents as the neighbours').
#: r_s (autumn on the southern Great Plains): grassland 250 s m-1 (senescent grass, the driest
#: canopy) > forest 180 > savanna 150 > farmland 120.
GRID_CLASSES = {
    "forest": REGION_CLASSES["forest"],
    "needleleaf_forest": ("DNF", "DNF", *REGION_CLASSES["forest"][2:]),
    "savanna": ("SAV", "SAV", 0.17, 150.0, (0.012, 1.15, -0.28), (0.2, 0.87, 0.22)),
    "farmland": REGION_CLASSES["farmland"],
    "grassland": ("GRA", "GRA", 0.19, 250.0, (0.0035, 1.2, -0.30), (0.065, 0.9, 0.25)),
    "urban": REGION_CLASSES["urban"],
    "bare": REGION_CLASSES["bare"],
    "water": REGION_CLASSES["water"],
}
#: the map's IGBP code -> class of GRID_CLASSES
GRID_CLASS_OF = {spec[0]: name for name, spec in GRID_CLASSES.items()}


def law_kh(spec, wind: float = 4.0, ri: float = 0.05) -> float:
    """The mean of a class law's stable (Ri = +ri) and unstable (Ri = -ri) K_h at ``wind`` [m2 s-1]:
    the number that ranks the classes' laws (``spec`` laid out as REGION_CLASSES' values)."""
    a_s, b_s, c_s = spec[4]
    a_u, b_u, c_u = spec[5]
    return 0.5 * (a_s * wind**b_s * ri**c_s + a_u * wind**b_u * ri**c_u)


def igbp_land_cover(ds: xr.Dataset) -> np.ndarray:
    """(ny, nx) IGBP index (1 = ENF ... 17 = WAT) of a grid's ``land_cover``, read by its CF
    ``flag_values``/``flag_meanings`` where it has them (e.g. Little Washita's 'grasslands'), else
    as IGBP numbering. A value that is no IGBP class is a DataError naming it and its cells."""
    from ..domain.build import land_cover_codes

    file = ds.attrs.get("source_file", ds.attrs.get("site_id", "<grid>"))
    if "land_cover" not in ds.variables:
        raise DataError(f"{file}: no variable land_cover; expected a land-cover index map on (y, x)")
    lc = ds["land_cover"]
    if set(lc.dims) != {"y", "x"}:
        raise DataError(f"{file}: variable land_cover has dims {lc.dims}; expected (y, x)")
    values = np.asarray(lc.transpose("y", "x").values)
    codes = land_cover_codes(values, dict(lc.attrs))
    bad = codes == ""
    if bad.any():
        y, x = np.argwhere(bad)[0]
        raise DataError(f"{file}: variable land_cover: value {values[y, x].item()!r} at cell (y={y}, x={x}) and "
                        f"{int(bad.sum()) - 1} more cells is no IGBP class; expected IGBP numbering 1-17 or CF "
                        f"flag_meanings naming IGBP classes")
    return np.vectorize(lambda c: IGBP_BY_INDEX.index(c) + 1, otypes=[np.int16])(codes)


def with_igbp_land_cover(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with ``land_cover`` recoded to the IGBP index with the IGBP codes as flag_meanings, the
    form ``models.regional.region_data`` reads (a grid file names its classes in its own words)."""
    codes = igbp_land_cover(ds)
    attrs = {"flag_values": np.arange(1, len(IGBP_BY_INDEX) + 1, dtype=np.int16), "flag_meanings": " ".join(IGBP_BY_INDEX),
             "comment": f"IGBP index recoded from the file's land_cover ({ds['land_cover'].attrs.get('long_name', '')})"}
    ds = ds.drop_vars("land_cover")
    return ds.assign_coords(land_cover=(("y", "x"), codes, attrs))


def grid_surfaces(cls: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fringe, homogeneous) masks of a class map: fringe cells have another class among their
    3 x 3 neighbours (the heterogeneous surface); homogeneous cells have one class over their
    5 x 5 neighbourhood (edges padded by repetition). Disjoint."""
    def uniform(size):
        pad = np.pad(cls, size // 2, mode="edge")
        win = np.lib.stride_tricks.sliding_window_view(pad, (size, size))
        return (win == cls[..., None, None]).all(axis=(-1, -2))

    return ~uniform(3), uniform(5)


def _grid_towers(cls: np.ndarray, fringe: np.ndarray, homogeneous: np.ndarray) -> list[tuple[int, int]]:
    """One tower per class, largest class first, at its homogeneous cell nearest the class's
    centroid (any cell of the class when none is homogeneous), and one fringe cell nearest the
    grid's centre."""
    towers = []
    counts = {c: int((cls == c).sum()) for c in np.unique(cls)}
    for c in sorted(counts, key=counts.get, reverse=True):
        cells = np.argwhere((cls == c) & homogeneous)
        cells = cells if len(cells) else np.argwhere(cls == c)
        centre = np.argwhere(cls == c).mean(axis=0)
        r, col = cells[np.argmin(np.hypot(*(cells - centre).T))]
        towers.append((int(r), int(col)))
    taken = np.zeros(cls.shape, bool)
    for r, col in towers:
        taken[r, col] = True
    cells = np.argwhere(fringe & ~taken)
    if len(cells):
        centre = (np.array(cls.shape) - 1) / 2.0
        r, col = cells[np.argmin(np.hypot(*(cells - centre).T))]
        towers.append((int(r), int(col)))
    return towers


def _spin_up_attrs(days: int) -> dict:
    return {"long_name": "spin-up step (not to be scored)",
            "comment": f"the record's first day repeated {days} times before it, dated the days before"}


def with_spin_up(ds: xr.Dataset, days: int) -> xr.Dataset:
    """``ds`` (hourly, on time) with its first day repeated ``days`` times before the record, dated
    the days before (the time axis stays regular and each step keeps its hour of day), and a
    ``spin_up`` (time) flag, True on the repeated steps: a spin-up that models run over a dataset
    share and that scoring leaves out."""
    per_day = 24
    first = ds.isel(time=slice(0, per_day))
    day = np.timedelta64(1, "D")
    spins = [first.assign_coords(time=first.time.values - k * day) for k in range(days, 0, -1)]
    out = xr.concat([*spins, ds], dim="time", data_vars="minimal", coords="minimal", compat="override") if spins else ds
    out.attrs = dict(ds.attrs)
    return out.assign(spin_up=("time", np.arange(out.sizes["time"]) < days * per_day, _spin_up_attrs(days)))


def virtual_region_from_grid(grid: xr.Dataset, *, spin_up_days: int = 3, seed: int = 0, towers=None,
                             flux_noise: float = 10.0, flux_gap_fraction: float = 0.1, lst_noise: float = 0.5,
                             cloud_fraction: float = 0.3, cell_size: float | None = None) -> xr.Dataset:
    """A virtual region whose spatial structure and forcing are a real grid's (issue 15 item 6a),
    e.g. the Little Washita NLDAS-2 grid (``data.gridded.read_gridded``): its land-cover map gives
    each cell a class of GRID_CLASSES (true K_h law, r_s, albedo, LaD defaults) and its forcing,
    spatially varying as the file has it, drives the truth (``physics.regional.RegionalModel``,
    open boundaries). The forcing is used unchanged: no lapse rate or albedo perturbation is
    added (the real forcing varies in space already); an ``elevation`` field (y, x) of the grid is
    copied, not applied (Little Washita's file has none, so the result has none).

    ``grid``: a canonical gridded dataset on (time, y, x), hourly, with FORCING_NAMES (incl. the wind
    components Wind_E, Wind_N the air layer advects with) complete on every cell, and ``land_cover``
    (IGBP numbering or CF flag_meanings). Spin-up: the record's first day is repeated
    ``spin_up_days`` times before it (labelled with the dates before the record, so the axis stays
    regular) and the truth runs from the physics' initial state through them and the record; these
    steps are flagged by ``spin_up`` (time) and have no observations, so that models run over the
    dataset spin up alike and scoring excludes them.

    The result has ``virtual_region``'s layout: forcing, ``*_true`` fields (Qh, Qle, AvgSurfT, Kh,
    rs, Tair_layer, Rnet, Qg, Qf), observations (Qh, Qle at the ``towers`` cells, default one per
    class and one in the fringe; AvgSurfT at the overpass hours with cloud gaps), land_cover (IGBP
    codes), surface_class (index into ``attrs['class_names']``), fringe and homogeneous
    (``grid_surfaces``), tower, spin_up. ``cell_size`` [m]: default the spacing of the grid's x
    coordinate when it is in metres, else 1000."""
    file = str(grid.attrs.get("source_file", grid.attrs.get("site_id", "<grid>")))
    missing = [v for v in FORCING_NAMES if v not in grid]
    if missing:
        raise DataError(f"{file}: the virtual region needs the forcing {', '.join(missing)} on (time, y, x); "
                        f"found {sorted(grid.data_vars)}")
    grid = grid.transpose("time", "y", "x", ...)
    step_s = float(grid.attrs.get("time_step_s", np.nan))
    if step_s != 3600.0:
        raise DataError(f"{file}: attribute time_step_s is {step_s!r}; the virtual region expects hourly forcing (3600)")
    per_day = 24
    if grid.sizes["time"] < per_day:
        raise DataError(f"{file}: variable time has {grid.sizes['time']} steps; expected at least one day ({per_day})")
    for name in FORCING_NAMES:
        bad = ~np.isfinite(np.asarray(grid[name].values))
        if bad.any():
            t, y, x = np.argwhere(bad)[0]
            raise DataError(f"{file}: variable {name} is missing at time {str(grid.time.values[t])[:16]}, cell "
                            f"(y={y}, x={x}) and {int(bad.sum()) - 1} more values; expected every cell complete")
    codes = igbp_land_cover(grid)
    names = [IGBP_BY_INDEX[c - 1] for c in np.unique(codes)]
    lawless = [c for c in names if c not in GRID_CLASS_OF]
    if lawless:
        raise DataError(f"{file}: variable land_cover has class(es) {', '.join(lawless)} with no true law; "
                        f"expected only {', '.join(GRID_CLASS_OF)} (GRID_CLASSES)")
    class_names = tuple(n for n in GRID_CLASSES if GRID_CLASSES[n][0] in names)
    cls = np.vectorize(lambda c: class_names.index(GRID_CLASS_OF[IGBP_BY_INDEX[c - 1]]))(codes)
    fringe, homogeneous = grid_surfaces(cls)
    if cell_size is None:
        x = np.asarray(grid["x"].values, float) if "x" in grid.coords else np.array([])
        metres = "x" in grid.coords and str(grid["x"].attrs.get("units", "")).strip() == "m" and x.size > 1
        cell_size = float(np.median(np.diff(x))) if metres else 1000.0

    # forcing: the record, its first day repeated spin_up_days times before it
    ds = with_spin_up(grid[list(FORCING_NAMES)].load(), spin_up_days)
    spin_flag = ds["spin_up"].values
    ds = ds.drop_vars(["spin_up", *[c for c in ds.coords if c not in ("time", "y", "x")]])
    for dim in ("y", "x"):  # cell centres in metres where the grid has no projected coordinates
        if dim not in ds.coords:
            ds = ds.assign_coords({dim: (np.arange(ds.sizes[dim]) + 0.5) * cell_size})
    n_spin = int(spin_flag.sum())
    specs = [GRID_CLASSES[n] for n in class_names]
    dims = ("time", "y", "x")
    for name, (value, attrs) in _class_truth(ds, cls, specs, cell_size).items():
        ds[name] = (dims, value, attrs)

    rng = np.random.default_rng(seed + 11)
    if towers is None:
        towers = _grid_towers(cls, fringe, homogeneous)
    tower = _observe(ds, towers, rng, flux_noise=flux_noise, flux_gap_fraction=flux_gap_fraction,
                     lst_noise=lst_noise, cloud_fraction=cloud_fraction, hidden=spin_flag)
    _static_fields(ds, codes, cls, class_names, fringe, homogeneous, tower)
    elevation = grid["elevation"] if "elevation" in grid.variables else None
    if elevation is not None and set(elevation.dims) == {"y", "x"}:
        ds["elevation"] = (("y", "x"), np.asarray(elevation.transpose("y", "x").values), dict(elevation.attrs))
    ds["spin_up"] = (("time",), spin_flag, _spin_up_attrs(spin_up_days))
    site = str(grid.attrs.get("site_id", Path(file).stem))
    ds.attrs = {k: grid.attrs[k] for k in ("utc_offset_rule", "location_note") if k in grid.attrs}
    ds.attrs.update({
        "site_id": f"VIRTUAL-{site}", "site_name": f"virtual region on the grid of {site} (seed {seed})",
        "latitude": float(grid.attrs.get("latitude", np.nan)), "longitude": float(grid.attrs.get("longitude", np.nan)),
        "utc_offset_h": float(grid.attrs.get("utc_offset_h", 0.0)), "time_step_s": 3600,
        "cell_size_m": cell_size, "forcing_site": Path(file).name, "source_file": file,
        "source_format": "virtual-region", "truth": _truth_note({n: GRID_CLASSES[n] for n in class_names}),
        "class_names": " ".join(class_names),
        "forcing_note": "the grid's own forcing, unchanged (no lapse rate, no albedo perturbation of the forcing); "
                        + ("its elevation field copied" if "elevation" in ds else "the grid has no elevation field"),
        "repairs": str(grid.attrs.get("repairs", "")), "fill_report": str(grid.attrs.get("fill_report", "")),
        "boundary": "open", "spin_up_days": spin_up_days, "spin_up_steps": n_spin,
        "time_convention": str(grid.attrs.get("time_convention", "")),
    })
    return ds
