"""The second virtual region: class map and forcing of a real grid (Little Washita), truth by the
package's regional physics (issue 15 item 6a)."""

import numpy as np
import pytest

from hybridlsm.data.schema import IGBP_BY_INDEX, DataError
from hybridlsm.data.virtual_region import (
    GRID_CLASSES, OVERPASS_HOURS, RS_BOUNDS, grid_surfaces, law_kh, virtual_region_from_grid, with_igbp_land_cover,
)

LW = "LittleWashita_NLDAS_41x41_120h.nc"
#: a 12 x 12 corner of Little Washita with all four of its classes (18 forest cells in the west)
CROP = {"y": slice(20, 32), "x": slice(0, 12)}


@pytest.fixture(scope="module")
def grid(shared_data):
    path = shared_data / "gridded" / LW
    if not path.exists():
        pytest.skip(f"{path} not found (the Little Washita sample of ../shared/data/gridded)")
    from hybridlsm.data.gridded import read_gridded

    return read_gridded(path).load()


@pytest.fixture(scope="module")
def region(grid):
    # two days of the record and one spin-up day: the physics' compile dominates (~10 s)
    return virtual_region_from_grid(grid.isel(time=slice(0, 48), **CROP), spin_up_days=1)


@pytest.mark.slow  # the region fixture runs the physics (~25 s on 2 shared cores, mostly compiling)
def test_layout_classes_towers_and_gaps(region, grid):
    ds = region
    assert dict(ds.sizes) == {"time": 72, "y": 12, "x": 12}
    spin = ds["spin_up"].values
    assert spin[:24].all() and not spin[24:].any() and ds.attrs["spin_up_steps"] == 24
    # the spin-up is the record's first day again, dated the day before
    assert np.array_equal(ds["Tair"].values[:24], ds["Tair"].values[24:48])
    assert (np.diff(ds.time.values) == np.timedelta64(1, "h")).all()
    assert ds.time.values[24] == grid.time.values[0]
    # the real, spatially varying forcing is kept unchanged
    crop = grid.isel(time=slice(0, 48), **CROP)
    for name in ("Tair", "SWdown", "Wind_E", "Precip"):
        assert np.array_equal(ds[name].values[24:], crop[name].values)
    assert ds["Tair"].values[30].std() > 0
    # classes: the map's four IGBP classes, each with its law
    names = ds.attrs["class_names"].split()
    assert names == ["needleleaf_forest", "savanna", "farmland", "grassland"]
    assert ds["surface_class"].attrs["flag_meanings"].split() == names
    lc = with_igbp_land_cover(crop)["land_cover"].values
    assert np.array_equal(ds["land_cover"].values, lc)
    for i, name in enumerate(names):
        assert set(np.unique(lc[ds["surface_class"].values == i])) == {IGBP_BY_INDEX.index(GRID_CLASSES[name][0]) + 1}
    # towers: one per class and one in the fringe; observed only there, never in the spin-up
    tower = ds["tower"].values
    assert tower.sum() == 5 and ds["fringe"].values[tower].any()
    assert set(np.unique(ds["surface_class"].values[tower])) == set(range(4))
    qh = ds["Qh"].values
    assert (np.isfinite(qh).any(axis=0) <= tower).all()
    assert not np.isfinite(qh[spin]).any() and not np.isfinite(ds["AvgSurfT"].values[spin]).any()
    gaps = np.isnan(qh[~spin][:, tower]).mean()
    assert 0.05 <= gaps <= 0.3
    # the surface-temperature product: overpass hours only, about 30 % cloud
    lst = ds["AvgSurfT"].values[~spin]
    hours = ds.time.dt.hour.values[~spin]
    seen = np.isfinite(lst).any(axis=(1, 2))
    assert set(hours[seen]) <= set(OVERPASS_HOURS)
    assert 0.5 <= np.isfinite(lst[np.isin(hours, OVERPASS_HOURS)]).mean() <= 0.9
    rs = ds["rs_true"].values
    assert rs.min() >= RS_BOUNDS[0] and rs.max() <= RS_BOUNDS[1]


@pytest.mark.slow  # the region fixture runs the physics (~25 s on 2 shared cores, mostly compiling)
def test_truth_closes_each_column_and_orders_kh_by_the_laws(region):
    ds = region
    for name in ("Qh", "Qle", "AvgSurfT", "Kh", "Tair_layer"):
        assert np.isfinite(ds[f"{name}_true"].values).all(), name
    # energy closure of every column at every step: Rn = H + LE + G + Q_f
    residual = ds["Rnet_true"] - ds["Qh_true"] - ds["Qle_true"] - ds["Qg_true"] - ds["Qf_true"]
    assert float(np.abs(residual).max()) < 1e-6
    # the true K_h ranks the classes as their laws do (forest > savanna > farmland > grassland)
    names = ds.attrs["class_names"].split()
    scored = ~ds["spin_up"].values
    kh = ds["Kh_true"].values[scored]
    cls = ds["surface_class"].values
    mean = {name: kh[:, cls == i].mean() for i, name in enumerate(names)}
    by_law = sorted(names, key=lambda n: law_kh(GRID_CLASSES[n]), reverse=True)
    assert by_law == ["needleleaf_forest", "savanna", "farmland", "grassland"]
    assert sorted(names, key=mean.get, reverse=True) == by_law


@pytest.mark.slow  # the region fixture runs the physics (~25 s on 2 shared cores, mostly compiling)
def test_region_data_accepts_it(region):
    import jax.numpy as jnp

    from hybridlsm.models.regional import region_data

    data = region_data(region, jnp.float64)
    assert data.shape == (12, 12) and data.n_steps == 72
    assert data.classes == ("DNF", "SAV", "GRA", "CRO")
    assert set(data.observed) == {"Qh", "Qle", "AvgSurfT"}


def test_surfaces_fringe_and_homogeneous_are_disjoint():
    cls = np.zeros((9, 9), int)
    cls[:, 5:] = 1
    fringe, homogeneous = grid_surfaces(cls)
    assert fringe[:, 4:6].all() and not fringe[:, :4].any() and not fringe[:, 6:].any()
    assert homogeneous[:, :3].all() and not homogeneous[:, 3:7].any() and homogeneous[:, 7:].all()
    assert not (fringe & homogeneous).any()


def test_bad_grids_name_the_variable(grid):
    small = grid.isel(time=slice(0, 24), y=slice(0, 4), x=slice(0, 4))
    with pytest.raises(DataError, match="Wind_E"):
        virtual_region_from_grid(small.drop_vars("Wind_E"))
    with pytest.raises(DataError, match="time_step_s"):
        virtual_region_from_grid(small.assign_attrs(time_step_s=1800.0))
    with pytest.raises(DataError, match="at least one day"):
        virtual_region_from_grid(small.isel(time=slice(0, 12)))
    gappy = small.copy()
    gappy["Tair"] = gappy["Tair"].where(gappy.x != gappy.x[1])
    with pytest.raises(DataError, match=r"Tair is missing .* cell \(y=0, x=1\)"):
        virtual_region_from_grid(gappy)
    lc = small["land_cover"]
    with pytest.raises(DataError, match=r"land_cover: value 18 .* is no IGBP class"):  # CLM's 'bare_soil'
        virtual_region_from_grid(small.assign_coords(land_cover=lc.where(small.y != small.y[0], 18)))
    with pytest.raises(DataError, match="land_cover has class.*ENF with no true law"):
        virtual_region_from_grid(small.assign_coords(land_cover=lc.where(small.y != small.y[0], 1)))
