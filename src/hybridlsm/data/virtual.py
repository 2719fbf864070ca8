"""Virtual sites for twin experiments: a stochastic weather generator and, on top of it,
"observations" simulated by the physics model with a hidden "true" closure.

The weather generator is deliberately physical rather than random noise: shortwave follows solar
geometry and a cloud process, rain comes in Markov-chain wet spells with a seasonal (monsoon-like)
cycle and clouds that go with it, air temperature has seasonal, diurnal and synoptic parts, humidity
follows a dew-point depression that shrinks after rain, and longwave is Brutsaert's clear-sky
emissivity with a cloud correction. Everything is deterministic given the seed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from .. import thermo
from ..constants import STEFAN_BOLTZMANN, T_FREEZE
from ..solar import toa_shortwave


def synthetic_forcing(
    days: int = 365,
    start: str = "2021-01-01",
    step_s: int = 1800,
    latitude: float = 32.0,
    longitude: float = -110.0,
    utc_offset_h: float = -7.0,
    elevation: float = 1500.0,
    mean_temperature_c: float = 16.0,
    seasonal_amplitude_c: float = 9.0,
    diurnal_amplitude_c: float = 8.0,
    annual_precip_mm: float = 420.0,
    monsoon_peak_doy: int = 215,
    seed: int = 0,
    site_id: str = "VIRT-1",
) -> xr.Dataset:
    """Half-hourly (or ``step_s``) forcing in the canonical form (Tair K, Qair, VPD hPa, RH %, Psurf Pa,
    Wind, SWdown, LWdown, Precip kg m-2 s-1) with site attributes."""
    rng = np.random.default_rng(seed)
    steps_per_day = int(round(86400 / step_s))
    n = days * steps_per_day
    time = pd.date_range(start, periods=n, freq=pd.Timedelta(seconds=step_s))
    doy = time.day_of_year.to_numpy()
    hour = (time.hour + time.minute / 60.0).to_numpy() + 0.5 * step_s / 3600.0
    day_index = np.arange(n) // steps_per_day
    day_doy = doy[::steps_per_day][:days]

    # --- wet spells: two-state Markov chain with a seasonal wet-day probability -----------------
    season = np.exp(-0.5 * ((day_doy - monsoon_peak_doy) / 35.0) ** 2)  # monsoon bump
    p_wet_after_dry = 0.05 + 0.35 * season
    p_wet_after_wet = 0.35 + 0.35 * season
    wet = np.zeros(days, dtype=bool)
    for d in range(1, days):
        p = p_wet_after_wet[d] if wet[d - 1] else p_wet_after_dry[d]
        wet[d] = rng.random() < p
    daily_amount = np.where(wet, rng.exponential(1.0, days), 0.0)
    if daily_amount.sum() > 0:
        daily_amount *= annual_precip_mm * days / 365.0 / daily_amount.sum()

    # rain falls in a 2-hour shower starting at a random afternoon (convective) hour
    precip_mm = np.zeros(n)
    shower_steps = max(1, int(round(7200 / step_s)))
    for d in np.flatnonzero(wet):
        start_hour = rng.uniform(12.0, 20.0)
        i0 = d * steps_per_day + int(start_hour * 3600 / step_s)
        precip_mm[i0 : i0 + shower_steps] += daily_amount[d] / shower_steps
    precip = precip_mm / step_s  # kg m-2 s-1

    # --- clouds: AR(1) in logit space, pushed up on wet days ------------------------------------
    z = np.zeros(days)
    for d in range(1, days):
        z[d] = 0.6 * z[d - 1] + rng.normal(0.0, 0.9)
    cloud_daily = 1.0 / (1.0 + np.exp(-(z - 1.2 + 2.2 * wet + 1.0 * season)))
    cloud = cloud_daily[day_index]

    # --- shortwave: TOA x clear-sky transmissivity x cloud attenuation ---------------------------
    toa = toa_shortwave(time, latitude, longitude, utc_offset_h, step_s)
    clear_transmissivity = 0.75 + 2e-5 * elevation
    sw_down = toa * clear_transmissivity * (1.0 - 0.72 * cloud**1.5)

    # --- air temperature: seasonal + synoptic + diurnal (damped by clouds), minimum near sunrise --
    synoptic = np.zeros(days)
    for d in range(1, days):
        synoptic[d] = 0.8 * synoptic[d - 1] + rng.normal(0.0, 1.6)
    seasonal = mean_temperature_c - seasonal_amplitude_c * np.cos(2 * np.pi * (doy - 20) / 365.0)
    diurnal = 0.5 * diurnal_amplitude_c * (1.0 - 0.6 * cloud) * np.cos(2 * np.pi * (hour - 15.0) / 24.0)
    t_air_c = seasonal + synoptic[day_index] + diurnal - 2.0 * (precip_mm > 0)
    t_air = t_air_c + T_FREEZE

    # --- humidity: dew-point depression, small after rain and in the monsoon ---------------------
    days_since_rain = np.zeros(days)
    for d in range(1, days):
        days_since_rain[d] = 0.0 if wet[d] else days_since_rain[d - 1] + 1.0
    depression = np.clip(9.0 + 12.0 * (1.0 - season) + 0.4 * days_since_rain - 5.0 * wet, 4.0, 30.0)
    t_dew = seasonal + synoptic[day_index] - 0.5 * diurnal_amplitude_c * 0.3 - depression[day_index] + T_FREEZE
    e = np.minimum(thermo.saturation_vapour_pressure(t_dew), 0.98 * thermo.saturation_vapour_pressure(t_air))
    p_surf = 101325.0 * np.exp(-elevation / 8400.0) + rng.normal(0.0, 150.0, days)[day_index]
    q_air = thermo.specific_humidity_from_vapour_pressure(e, p_surf)
    e_sat = thermo.saturation_vapour_pressure(t_air)
    vpd_hpa = (e_sat - e) / 100.0
    rh = 100.0 * e / e_sat

    # --- wind: lognormal AR(1), stronger in the afternoon --------------------------------------
    w = np.zeros(days)
    for d in range(1, days):
        w[d] = 0.5 * w[d - 1] + rng.normal(0.0, 0.35)
    wind = np.exp(0.9 + w[day_index]) * (1.0 + 0.35 * np.cos(2 * np.pi * (hour - 15.0) / 24.0))

    # --- longwave: Brutsaert (1975) clear-sky emissivity, cloud correction ----------------------
    eps_clear = 1.24 * (e / 100.0 / t_air) ** (1.0 / 7.0)
    eps_sky = eps_clear * (1.0 - cloud) + cloud
    lw_down = eps_sky * STEFAN_BOLTZMANN * t_air**4

    data = {
        "Tair": (t_air, "K"),
        "Qair": (q_air, "kg kg-1"),
        "VPD": (vpd_hpa, "hPa"),
        "RH": (rh, "%"),
        "Psurf": (p_surf, "Pa"),
        "Wind": (wind, "m s-1"),
        "SWdown": (sw_down, "W m-2"),
        "LWdown": (lw_down, "W m-2"),
        "Precip": (precip, "kg m-2 s-1"),
    }
    ds = xr.Dataset(
        {k: ("time", v.astype(np.float64), {"units": u}) for k, (v, u) in data.items()},
        coords={"time": time},
    )
    ds.attrs.update(
        site_id=site_id,
        site_name=f"virtual site (weather generator, seed {seed})",
        latitude=float(latitude),
        longitude=float(longitude),
        elevation=float(elevation),
        igbp="GRA",
        canopy_height=0.5,
        measurement_height=3.0,
        utc_offset_h=float(utc_offset_h),
        time_step_s=float(step_s),
        source_file="<generated>",
        source_format="virtual",
    )
    return ds


# ------------------------------------------------------------------------ hidden "true" closure


#: The twin experiment's known exchange law (``truth="kh_law"``): stable b and c as seed 000's
#: discovered law (K_h = 0.087 u^1.23 Ri^-0.32), a scaled to the bulk K_h = (z - d) / r_a of a 3 m
#: grass tower; the unstable branch grows with |Ri| (free convection). The branches meet near
#: |Ri| = 0.01 at u = 3 m s-1.
TWIN_LAW = {"stable": (0.005, 1.23, -0.32), "unstable": (0.1, 0.9, 0.25)}
TRUTHS = ("jarvis", "kh_law")


def _true_closure(convective: bool):
    """The hidden closure of the twin: LaD bulk fluxes whose stomatal resistance responds to
    vapour-pressure deficit and light (Jarvis-type, absent from the default physics; soil water acts
    through beta as in LaD) and, with ``convective``, whose exchange is enhanced in free convection.
    A hybrid must learn these from the fluxes."""
    import jax.numpy as jnp

    from ..constants import CP_AIR
    from ..physics.closure import Closure, TurbulentFluxes

    class JarvisClosure(Closure):
        def __call__(self, c):
            f = c.forcing
            vpd_kpa = (thermo.saturation_vapour_pressure(f.t_air) - thermo.vapour_pressure_from_specific_humidity(f.q_air, f.p_surf)) / 1000.0
            light = (f.sw_down + 20.0) / (f.sw_down + 200.0)
            rs = c.surface_resistance * (1.0 + 0.8 * jnp.maximum(vpd_kpa, 0.0)) / light
            ra = c.aerodynamic_resistance
            if convective:
                ra = ra / (1.0 + 0.5 * jnp.tanh(jnp.maximum(-c.richardson, 0.0) * 5.0))
            gh = c.rho_air * CP_AIR / ra
            gq = c.beta * c.rho_air / (ra + rs)
            return TurbulentFluxes(gh * (c.t_surface - c.theta_air), gq * (c.q_sat - c.q_air), gh, gq * c.dq_sat_dt)

    return JarvisClosure()


def _true_model(truth: str):
    from ..physics import LaDModel
    from ..physics.exchange import ExchangeLaw

    if truth == "jarvis":
        return LaDModel(closure=_true_closure(convective=True))
    if truth == "kh_law":
        return LaDModel(closure=_true_closure(convective=False), exchange_law=ExchangeLaw(TWIN_LAW))
    raise ValueError(f"unknown virtual-site truth {truth!r}; allowed: {', '.join(TRUTHS)}")


def tower_gaps(n: int, fraction: float, rng: np.random.Generator, max_length: int = 96) -> np.ndarray:
    """Boolean (n,) mask of missing observations: gaps of 1 to ``max_length`` steps at random
    places until ``fraction`` of the record is missing (as towers lose data in blocks)."""
    missing = np.zeros(n, dtype=bool)
    while missing.mean() < fraction:
        length = int(rng.integers(1, max_length + 1))
        start = int(rng.integers(0, max(n - length, 1)))
        missing[start : start + length] = True
    return missing


def virtual_site(
    site_id: str = "VIRTUAL",
    igbp: str = "GRA",
    days: int = 365,
    time_step_s: int = 1800,
    start="2020-01-01",
    latitude: float = 32.0,
    longitude: float = -110.0,
    seed: int = 0,
    noise: float = 0.0,
    truth: str = "jarvis",
    gap_fraction: float = 0.0,
    surface_temperature_noise: float | None = None,
) -> xr.Dataset:
    """A virtual flux-tower record: generated forcing and fluxes simulated by the LaD column with a
    hidden truth (spun up over the record), plus Gaussian observation noise [W m-2] on Qh, Qle, Qg
    and Rnet and, with ``gap_fraction``, blocks of missing Qh and Qle. SoilTemp (2.75 cm) and
    SoilMoistVol (root zone) are the 'tower' soil data. With ``surface_temperature_noise`` [K] the
    record also has a radiometric surface temperature ``AvgSurfT`` (what a tower derives from its
    upwelling longwave, LW_OUT) with that Gaussian noise and no gaps (a separate instrument).

    ``truth``: ``"jarvis"`` (Jarvis-type r_s, convective enhancement of the Louis exchange) or
    ``"kh_law"`` (Jarvis-type r_s and the known branched law :data:`TWIN_LAW` for K_h; the true K_h
    series is kept as ``Kh_true``, with ``RiB_true``, for checking what a hybrid recovers)."""
    import jax
    import jax.numpy as jnp

    from ..physics import default_params, forcing_from_datasets, rollout, spin_up

    utc = round(longitude / 15.0)
    ds = synthetic_forcing(days=days, start=str(start), step_s=time_step_s, latitude=latitude,
                           longitude=longitude, utc_offset_h=utc, seed=seed, site_id=site_id)  # fmt: skip
    model = _true_model(truth)
    ds.attrs.update(igbp=igbp, site_name=f"virtual {igbp} site (hidden {truth} truth, seed {seed})")
    forcing = forcing_from_datasets([ds], dtype=jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
    params = default_params([igbp], canopy_height=ds.attrs["canopy_height"],
                            measurement_height=ds.attrs["measurement_height"])  # fmt: skip
    params = {k: jnp.asarray(v, forcing.t_air.dtype) for k, v in params.items()}
    state0, _ = spin_up(model, params, forcing, max_cycles=5)
    _, out = jax.jit(lambda s: rollout(model, params, forcing, s))(state0)
    rng = np.random.default_rng(seed + 1)
    gaps = tower_gaps(ds.sizes["time"], gap_fraction, rng) if gap_fraction > 0 else np.zeros(ds.sizes["time"], bool)
    for name in ("Qh", "Qle", "Qg", "Rnet"):
        values = np.asarray(out[name])[:, 0] + (rng.normal(0.0, noise, ds.sizes["time"]) if noise > 0 else 0.0)
        if name in ("Qh", "Qle"):
            values = np.where(gaps, np.nan, values)
        ds[name] = ("time", values, {"units": "W m-2", "source": "LaD with hidden closure + noise"})
    if surface_temperature_noise is not None:
        values = np.asarray(out["AvgSurfT"])[:, 0] + rng.normal(0.0, surface_temperature_noise, ds.sizes["time"])
        ds["AvgSurfT"] = ("time", values, {"units": "K", "source": "LaD with hidden closure + noise (radiometric)"})
    ds["SoilTemp"] = ("time", np.asarray(out["SoilTemp"])[:, 0, 1], {"units": "K", "depth_m": 0.0275})
    depth = float(params["root_zone_capacity"][0]) / 132.0  # W_max = z_r x AWC (medium soil)
    ds["SoilMoistVol"] = ("time", np.asarray(out["SoilMoist"])[:, 0] / (1000.0 * depth) + 0.05,
                          {"units": "m3 m-3", "depth_m": depth})  # fmt: skip
    jarvis = "rs x (1 + 0.8 VPD[kPa]) x (SW + 200)/(SW + 20)"
    if truth == "jarvis":
        ds.attrs["truth"] = f"JarvisClosure: {jarvis}; ra / (1 + 0.5 tanh(5 max(-Ri, 0)))"
    else:
        ds.attrs["truth"] = f"JarvisClosure: {jarvis}; K_h = a u^b |Ri|^c per branch: {TWIN_LAW}"
        ds["Kh_true"] = ("time", np.asarray(out["Kh"])[:, 0], {"units": "m2 s-1", "long_name": "true bulk K_h"})
        ds["RiB_true"] = ("time", np.asarray(out["RiB"])[:, 0], {"units": "1", "long_name": "true bulk Richardson number"})
    ds.attrs["gap_fraction"] = float(np.mean(gaps))
    return ds


#: IGBP classes a virtual grid's land cover cycles through, in blobs (numbering of IGBP_BY_INDEX)
GRID_CLASSES = ("GRA", "ENF", "DBF", "CRO", "SAV", "OSH", "MF", "EBF")

#: a virtual grid's wind turns through a full circle in this many days ...
WIND_TURN_DAYS = 8.0
#: ... and its direction differs across the grid by up to this much either way [rad] (smoothly)
DIRECTION_SPREAD = 0.5


def virtual_grid(ny: int, nx: int, days: int, step_s: int = 3600, *, seed: int = 0,
                 chunks: tuple[int, int, int] | None = None, start: str = "2021-01-01",
                 lapse_rate: float = 0.0065) -> xr.Dataset:
    """A lazily generated gridded forcing on (time, y, x), float32, any size: one virtual site's
    weather (``synthetic_forcing``) spread over ``ny`` x ``nx`` cells of 1 km with smooth spatial
    perturbations: an elevation field (Tair by ``lapse_rate`` K m-1, Psurf hydrostatically, LWdown
    with Tair^4), cloudiness (SWdown +-5 %), wind exposure (+-10 %) and rainfall (+-20 %); a
    ``land_cover`` index field (IGBP numbering) in blobs of ``GRID_CLASSES``; wind components
    ``Wind_E``, ``Wind_N`` of speed ``Wind`` (so Wind_E**2 + Wind_N**2 = Wind**2 to float32
    rounding) blowing toward a direction that turns slowly (``WIND_TURN_DAYS``) and varies smoothly
    across the grid (``DIRECTION_SPREAD``), for regional models' advection.

    Every variable is a dask array in ``chunks`` (time, y, x) (default one month of steps and the
    whole grid), computed chunk by chunk when written (``to_zarr``) or read, so a grid larger than
    memory can be generated and written."""
    import dask.array as da

    from .schema import IGBP_BY_INDEX

    base = synthetic_forcing(days=days, step_s=step_s, start=start, seed=seed, site_id="VGRID")
    nt = base.sizes["time"]
    chunks = chunks or (min(nt, 30 * 86400 // step_s), ny, nx)
    rng = np.random.default_rng(seed + 1)
    yy, xx = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")

    def smooth_field(scale_cells: float) -> np.ndarray:  # a sum of random plane waves, in [-1, 1]
        f = np.zeros((ny, nx))
        for _ in range(6):
            k = rng.normal(size=2) / scale_cells
            f += np.cos(2 * np.pi * (k[0] * yy + k[1] * xx) + rng.uniform(0, 2 * np.pi))
        return f / np.max(np.abs(f))

    elevation = float(base.attrs.get("elevation", 1500.0)) + 300.0 * smooth_field(40.0)
    d_elev = elevation - float(base.attrs.get("elevation", 1500.0))
    fields = {"SWdown": 1.0 + 0.05 * smooth_field(20.0), "Wind": 1.0 + 0.1 * smooth_field(15.0),
              "Precip": 1.0 + 0.2 * smooth_field(25.0)}  # fmt: skip

    def series(name):  # (T, 1, 1) lazily chunked in time
        return da.from_array(base[name].values.astype(np.float32)[:, None, None], chunks=(chunks[0], 1, 1))

    def spread(field):  # (1, ny, nx) chunked like the grid
        return da.from_array(field.astype(np.float32)[None], chunks=(1,) + tuple(chunks[1:]))

    t_air = series("Tair") - spread(lapse_rate * d_elev)
    lw = series("LWdown") * (t_air / series("Tair")) ** 4
    p = series("Psurf") * spread(np.exp(-d_elev / 8400.0))
    variables = {
        "Tair": t_air, "LWdown": lw, "Psurf": p, "Qair": series("Qair") * spread(np.ones((ny, nx))),
        "SWdown": series("SWdown") * spread(fields["SWdown"]), "Wind": series("Wind") * spread(fields["Wind"]),
        "Precip": series("Precip") * spread(fields["Precip"]),
    }  # fmt: skip
    blobs = (np.floor((smooth_field(10.0) + 1.0) * 4.0).clip(0, len(GRID_CLASSES) - 1)).astype(int)
    land_cover = np.asarray([IGBP_BY_INDEX.index(GRID_CLASSES[b]) + 1 for b in blobs.ravel()]).reshape(ny, nx)
    ds = xr.Dataset(
        {k: (("time", "y", "x"), v.rechunk(chunks).astype(np.float32), dict(base[k].attrs)) for k, v in variables.items()},
        coords={"time": base["time"].values, "y": np.arange(ny) * 1000.0, "x": np.arange(nx) * 1000.0},
        attrs={"time_step_s": float(step_s), "title": f"virtual grid {ny}x{nx}, seed {seed}"},
    )  # fmt: skip
    ds["land_cover"] = (("y", "x"), land_cover.astype(np.int16), {"long_name": "IGBP land cover class index"})
    ds["elevation"] = (("y", "x"), elevation.astype(np.float32), {"units": "m"})
    # wind components (drawn last: every variable above keeps its values): Wind's speed blowing
    # toward a direction that turns once every WIND_TURN_DAYS, +-DIRECTION_SPREAD rad across the grid
    hours = (base["time"].values - base["time"].values[0]) / np.timedelta64(1, "h")
    turning = da.from_array((2 * np.pi * hours / (24.0 * WIND_TURN_DAYS))[:, None, None], chunks=(chunks[0], 1, 1))
    direction = turning + spread(DIRECTION_SPREAD * smooth_field(30.0)).astype(np.float64)
    speed = ds["Wind"].data
    for name, part, long_name in (("Wind_E", da.cos, "eastward"), ("Wind_N", da.sin, "northward")):
        ds[name] = (("time", "y", "x"), (speed * part(direction)).rechunk(chunks).astype(np.float32),
                    {"units": "m s-1", "long_name": f"{long_name} wind component (Wind's speed)"})
    return ds
