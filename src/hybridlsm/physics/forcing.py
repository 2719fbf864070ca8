"""Meteorological forcing of the land model (architecture §2).

``Forcing`` holds arrays of shape ``(T, N)`` for a rollout (time-major, N sites or cells) or ``(N,)``
for one step. The step length travels with the forcing as a static field, so a model can never be
run with a time step that does not match its forcing.
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

#: Forcing field -> canonical (ALMA) variable name and unit.
FORCING_VARIABLES = {
    "sw_down": ("SWdown", "W m-2"),
    "lw_down": ("LWdown", "W m-2"),
    "t_air": ("Tair", "K"),
    "q_air": ("Qair", "kg kg-1"),
    "p_surf": ("Psurf", "Pa"),
    "wind": ("Wind", "m s-1"),
    "precip": ("Precip", "kg m-2 s-1"),
}


class Forcing(eqx.Module):
    """Forcing arrays, shape (T, N) or (N,).

    Attributes:
        sw_down: downward shortwave radiation [W m-2]
        lw_down: downward longwave radiation [W m-2]
        t_air: air temperature at the reference height [K]
        q_air: specific humidity [kg kg-1]
        p_surf: surface air pressure [Pa]
        wind: wind speed [m s-1]
        precip: total precipitation (rain + snow) [kg m-2 s-1]
        time_step_s: step length [s] (static)
    """

    sw_down: Float[Array, "*TN"]
    lw_down: Float[Array, "*TN"]
    t_air: Float[Array, "*TN"]
    q_air: Float[Array, "*TN"]
    p_surf: Float[Array, "*TN"]
    wind: Float[Array, "*TN"]
    precip: Float[Array, "*TN"]
    time_step_s: float = eqx.field(static=True, default=1800.0)

    @property
    def n_steps(self) -> int:
        """Number of time steps (first axis of a (T, N) forcing)."""
        return self.t_air.shape[0]

    @property
    def n_sites(self) -> int:
        """Number of sites or cells (last axis)."""
        return self.t_air.shape[-1]

    def at(self, index) -> "Forcing":
        """The forcing at one time index (or a slice), same static step length."""
        return jax.tree_util.tree_map(lambda a: a[index], self)


def forcing_from_datasets(datasets: Sequence, dtype=None) -> Forcing:
    """Stack canonical site (or grid) datasets into a (T, N) ``Forcing``.

    Each dataset has a ``time`` dimension and the variables Tair, Qair, Psurf, Wind, SWdown,
    LWdown, Precip in canonical units (architecture §1). Grid datasets (extra dims) contribute one
    column per cell (C order). All datasets must have the same number of steps and the same
    ``time_step_s``.

    Raises:
        ValueError: a variable is missing or contains NaN (naming the site, the variable and the
            first missing time), or the datasets disagree in length or step.
    """
    if len(datasets) == 0:
        raise ValueError("forcing_from_datasets: no datasets given")
    columns: dict[str, list[np.ndarray]] = {f: [] for f in FORCING_VARIABLES}
    n_steps = None
    step = None
    for i, ds in enumerate(datasets):
        site = ds.attrs.get("site_id", f"dataset {i}")
        ds_step = ds.attrs.get("time_step_s")
        if ds_step is None:
            times = np.asarray(ds["time"].values)
            if times.size < 2:
                raise ValueError(f"site {site!r}: no time_step_s attribute and fewer than 2 times")
            ds_step = float((times[1] - times[0]) / np.timedelta64(1, "s"))
        ds_step = float(ds_step)
        if step is None:
            step = ds_step
        elif ds_step != step:
            raise ValueError(
                f"site {site!r}: time_step_s {ds_step} differs from the first dataset's {step}"
            )
        nt = ds.sizes["time"]
        if n_steps is None:
            n_steps = nt
        elif nt != n_steps:
            raise ValueError(
                f"site {site!r}: {nt} time steps, the first dataset has {n_steps}; "
                "select a common period before stacking"
            )
        for field, (var, unit) in FORCING_VARIABLES.items():
            if var not in ds:
                raise ValueError(f"site {site!r}: forcing variable {var!r} [{unit}] is missing")
            da = ds[var].transpose("time", ...)
            values = np.asarray(da.values, dtype=float).reshape(nt, -1)
            bad = ~np.isfinite(values)
            if bad.any():
                first = int(np.argmax(bad.any(axis=1)))
                when = ds["time"].values[first] if "time" in ds.coords else first
                raise ValueError(
                    f"site {site!r}: forcing variable {var!r} has {int(bad.sum())} missing "
                    f"(NaN/inf) values, first at {when}; the model needs gap-free forcing "
                    "(fill gaps in preprocessing)"
                )
            columns[field].append(values)
    arrays = {f: jnp.asarray(np.concatenate(cols, axis=1), dtype=dtype) for f, cols in columns.items()}
    return Forcing(**arrays, time_step_s=step)
