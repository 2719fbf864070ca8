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
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from .. import thermo
from ..constants import GRAVITY, R_DRY
from .schema import IGBP_BY_INDEX, DataError

#: class -> (IGBP code of the land-cover map, IGBP code for the LaD defaults, albedo, r_s [s m-1],
#: stable (a, b, c), unstable (a, b, c)). Rougher classes exchange more (forest > urban > farmland >
#: bare > water); r_s ranks bare > urban > forest > farmland > water.
REGION_CLASSES = {
    "water": ("WAT", "WET", 0.07, 100.0, (0.002, 1.1, -0.30), (0.03, 0.9, 0.20)),
    "bare": ("BSV", "BSV", 0.30, 2500.0, (0.003, 1.2, -0.30), (0.05, 0.9, 0.25)),
    "forest": ("DBF", "DBF", 0.14, 180.0, (0.03, 1.1, -0.25), (0.4, 0.85, 0.20)),
    "farmland": ("CRO", "CRO", 0.20, 120.0, (0.005, 1.23, -0.32), (0.1, 0.9, 0.25)),
    "urban": ("URB", "URB", 0.15, 1500.0, (0.02, 1.0, -0.20), (0.3, 0.8, 0.30)),
}
CLASS_NAMES = tuple(REGION_CLASSES)

#: water columns: LaD has no lake, so a permanently wet column with water's heat capacity and a
#: well-mixed (highly conducting) upper layer
WATER_OVERRIDES = {"soil_heat_capacity": 4.18e6, "soil_thermal_conductivity": 4.9, "root_zone_capacity": 1999.0}

#: r_s of every class rises with the vapour-pressure deficit: r_s (1 + RS_VPD_GAIN VPD[kPa])
RS_VPD_GAIN = 0.5
RS_BOUNDS = (1e2, 1e4)  # the range of seed 000's bounded head
LAPSE_RATE = 0.0065  # K m-1
OVERPASS_HOURS = (1, 10, 13, 22)  # local: night and day overpasses of two polar orbiters
DEFAULT_SITE = "US-CRT_201101-201112_HH.csv"


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
                   cloud_fraction: float = 0.3, cell_size: float = 1000.0) -> xr.Dataset:
    """The virtual region (module docstring) as a gridded canonical dataset on (time, y, x).

    Forcing: Tair, Qair, Psurf, Wind, Wind_E, Wind_N, SWdown, LWdown, Precip. Static: land_cover
    (IGBP index, CF flag_meanings), surface_class (index into CLASS_NAMES), fringe, homogeneous,
    tower (bool), elevation. Observations: Qh, Qle (at tower cells, NaN elsewhere and in gaps),
    AvgSurfT (overpass hours, cloud gaps). Truth: Qh_true, Qle_true, AvgSurfT_true, Kh_true,
    rs_true, Tair_layer_true.

    ``site``: a FLUXNET-style CSV with forcing (default: US-CRT 2011 cropland in
    ``../shared/data/fluxnet``); a DataError names it when absent. ``towers``: (row, col) cells
    with flux observations; default four: interior farmland, fringe, forest and urban.
    """
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from ..physics import default_params, forcing_from_datasets, rollout, spin_up
    from ..physics.air_layer import AirLayer
    from ..physics.exchange import ClassExchangeLaw, ExchangeLaw
    from ..physics.lad import LaDModel
    from ..physics.regional import GridForcing, RegionalModel

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
    names = ("Tair", "Qair", "Psurf", "Wind", "Wind_E", "Wind_N", "SWdown", "LWdown", "Precip")
    values = (tair, qair, psurf, speed, speed * np.cos(direction), speed * np.sin(direction), field("SWdown"),
              lwdown, field("Precip"))
    units = ("K", "kg kg-1", "Pa", "m s-1", "m s-1", "m s-1", "W m-2", "W m-2", "kg m-2 s-1")
    dims = ("time", "y", "x")
    coords = {"time": met.time.values, "y": (np.arange(ny) + 0.5) * cell_size, "x": (np.arange(nx) + 0.5) * cell_size}
    ds = xr.Dataset({n: (dims, v, {"units": u}) for n, v, u in zip(names, values, units)}, coords=coords)

    # the truth: regional physics with the class laws and r_s
    n = ny * nx
    flat = cls.reshape(-1)
    spec = [REGION_CLASSES[CLASS_NAMES[c]] for c in flat]
    lad_codes = [s[1] for s in spec]
    overrides = {"albedo": np.array([s[2] for s in spec])}
    water = flat == CLASS_NAMES.index("water")
    defaults = default_params(lad_codes)
    for name, value in WATER_OVERRIDES.items():
        overrides[name] = np.where(water, value, np.asarray(defaults[name]))
    dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    params = default_params(lad_codes, overrides=overrides, dtype=dtype)
    grid = ds.stack(column=("y", "x")).transpose("time", "column")
    column_forcing = forcing_from_datasets([grid.assign_attrs(time_step_s=3600.0)], dtype=dtype)
    as_cols = lambda a: jnp.asarray(np.reshape(a, (n_steps, n)), dtype)  # noqa: E731
    gf = GridForcing(column_forcing, as_cols(ds["Wind_E"].values), as_cols(ds["Wind_N"].values))
    vpd_kpa = (thermo.saturation_vapour_pressure(tair) - thermo.vapour_pressure_from_specific_humidity(qair, psurf)) / 1000.0
    rs_class = np.array([s[3] for s in spec]).reshape(ny, nx)
    rs_true = np.clip(rs_class[None] * (1.0 + RS_VPD_GAIN * np.maximum(vpd_kpa, 0.0)), *RS_BOUNDS)
    laws = tuple(ExchangeLaw({"stable": REGION_CLASSES[c][4], "unstable": REGION_CLASSES[c][5]}, dtype)
                 for c in CLASS_NAMES)
    land = LaDModel(exchange_law=ClassExchangeLaw(laws, jnp.asarray(flat)))
    model = RegionalModel(AirLayer((ny, nx), dx=cell_size, dy=cell_size, boundary="open"), land=land).for_forcing(gf)
    dynamic = {"rs": as_cols(rs_true)}
    spin = spin_up_days * 24
    state0, _ = spin_up(model, params, gf.at(slice(0, spin)), dynamic={"rs": dynamic["rs"][:spin]}, max_cycles=2)
    run = eqx.filter_jit(lambda m, p, f, s, d: rollout(m, p, f, s, dynamic=d))  # arrays as arguments
    _, out = run(model, params, gf.at(slice(spin, None)), state0, {"rs": dynamic["rs"][spin:]})
    ds = ds.isel(time=slice(spin, None))
    t = n_steps - spin

    def grid_of(a):
        return np.asarray(a).reshape(t, ny, nx)

    truth = {"Qh": "W m-2", "Qle": "W m-2", "AvgSurfT": "K", "Kh": "m2 s-1", "rs": "s m-1", "Tair_layer": "K"}
    for name, unit in truth.items():
        value = grid_of(out[name]) if name != "rs" else rs_true[spin:]
        ds[f"{name}_true"] = (dims, value, {"units": unit, "long_name": f"true {name} (regional physics, class laws)"})

    # observations
    rng = np.random.default_rng(seed + 11)
    if towers is None:
        towers = _default_towers(cls, fringe, homogeneous)
    tower = np.zeros((ny, nx), bool)
    for r, c in towers:
        tower[r, c] = True
    from .virtual import tower_gaps

    for name in ("Qh", "Qle"):
        obs = np.full((t, ny, nx), np.nan)
        for r, c in towers:
            series = ds[f"{name}_true"].values[:, r, c] + rng.normal(0.0, flux_noise, t)
            obs[:, r, c] = np.where(tower_gaps(t, flux_gap_fraction, rng, max_length=12), np.nan, series)
        ds[name] = (dims, obs, {"units": "W m-2", "source": "virtual towers: truth + noise, with gaps"})
    hours = ds.time.dt.hour.values
    overpass = np.isin(hours, OVERPASS_HOURS)
    clouds = _cloud_field(t, ny, nx, rng) < cloud_fraction
    lst = ds["AvgSurfT_true"].values + rng.normal(0.0, lst_noise, (t, ny, nx))
    ds["AvgSurfT"] = (dims, np.where(overpass[:, None, None] & ~clouds, lst, np.nan),
                      {"units": "K", "source": "virtual satellite surface temperature: overpasses, cloud gaps"})

    codes = np.array([IGBP_BY_INDEX.index(REGION_CLASSES[CLASS_NAMES[c]][0]) + 1 for c in flat]).reshape(ny, nx)
    ds["land_cover"] = (("y", "x"), codes.astype(np.int16), {
        "flag_values": np.arange(1, len(IGBP_BY_INDEX) + 1, dtype=np.int16), "flag_meanings": " ".join(IGBP_BY_INDEX)})
    ds["surface_class"] = (("y", "x"), cls.astype(np.int16), {"flag_values": np.arange(len(CLASS_NAMES)),
                                                               "flag_meanings": " ".join(CLASS_NAMES)})
    ds["fringe"] = (("y", "x"), fringe)
    ds["homogeneous"] = (("y", "x"), homogeneous)
    ds["tower"] = (("y", "x"), tower)
    ds["elevation"] = (("y", "x"), elevation, {"units": "m"})
    ds.attrs.update({
        "site_id": "VIRTUAL-REGION", "site_name": f"virtual region {ny}x{nx} (seed {seed})",
        "latitude": float(met.attrs["latitude"]), "longitude": float(met.attrs["longitude"]),
        "utc_offset_h": float(met.attrs.get("utc_offset_h", 0.0)), "time_step_s": 3600,
        "cell_size_m": cell_size, "forcing_site": str(path.name), "source_format": "virtual-region",
        "truth": "; ".join(f"{k}: r_s {v[3]:g} x (1 + {RS_VPD_GAIN} VPD), K_h stable {v[4]}, unstable {v[5]}"
                           for k, v in REGION_CLASSES.items()),
        "repairs": met.attrs.get("repairs", ""), "fill_report": met.attrs.get("fill_report", ""),
        "boundary": "open", "spin_up_days": spin_up_days,
    })
    return ds


def _default_towers(cls, fringe, homogeneous) -> list[tuple[int, int]]:
    """One tower each in homogeneous farmland, the fringe, the forest and the urban core (the
    first such cell in a fixed scan from the class's centroid)."""
    towers = []
    for mask in (homogeneous, fringe & (cls == CLASS_NAMES.index("farmland")),
                 cls == CLASS_NAMES.index("forest"), (cls == CLASS_NAMES.index("urban")) & ~fringe):
        cells = np.argwhere(mask)
        if len(cells) == 0:
            continue
        centre = cells.mean(axis=0)
        r, c = cells[np.argmin(np.hypot(*(cells - centre).T))]
        towers.append((int(r), int(c)))
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
