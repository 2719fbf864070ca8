"""The reader registry: formats, detection order, declared options, adding a format."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from hybridlsm.data import (
    DataError,
    Reader,
    available_formats,
    detect_format,
    get_reader,
    read_site,
    read_sites,
    register_reader,
)
from hybridlsm.data import readers


def test_builtin_formats_in_detection_order():
    assert available_formats() == ["ameriflux-base", "fluxnet-csv", "plumber2", "wrf", "gridded"]
    assert sorted(get_reader("fluxnet-csv").options) == ["depths", "metadata", "site_id", "sites"]
    assert sorted(get_reader("plumber2").options) == ["find_partner", "metadata", "other", "sites"]
    assert sorted(get_reader("gridded").options) == ["check_steps", "chunks", "metadata", "variables"]
    assert sorted(get_reader("ameriflux-base").options) == ["depths", "metadata", "site_id", "sites"]
    assert sorted(get_reader("wrf").options) == ["check_steps", "chunks", "metadata"]
    with pytest.raises(DataError, match="unknown data format 'netcdf'; available formats: ameriflux-base, fluxnet-csv, plumber2, wrf, gridded"):
        get_reader("netcdf")


def test_unknown_option_is_a_type_error_naming_the_reader(shared_data):
    path = shared_data / "fluxnet" / "AT-Neu_201007-201007_HH.csv"
    with pytest.raises(TypeError, match=re.escape("reader 'fluxnet-csv': unknown option(s) ['chunks', 'colour']; allowed: depths, metadata, site_id, sites")):
        read_site(path, colour="red", chunks={})
    with pytest.raises(TypeError, match=r"read_sites: unknown keyword argument\(s\) \['colour'\]; options per format: ameriflux-base: depths, metadata, site_id, sites; fluxnet-csv"):
        read_sites([path], colour="red")


def test_explicit_format(shared_data):
    path = shared_data / "fluxnet" / "AT-Neu_201007-201007_HH.csv"
    ds = read_site(path, format="fluxnet-csv")
    assert ds.sizes["time"] == 1488 and ds.attrs["source_format"] == "fluxnet-csv-HH"
    met = shared_data / "fluxnet" / "original" / "DK-Fou_2005-2005_FLUXNET2015_Met.nc"
    with pytest.raises(DataError, match="unknown data format 'csv'"):
        read_site(path, format="csv")
    # a single-site netCDF forced through the gridded reader keeps its y, x dims
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DataWarnings and xarray's chunking hint
        g = read_site(met, format="gridded")
    assert g.attrs["source_format"] == "gridded-netcdf" and g.sizes["time"] == 17520


class _ToyReader(Reader):
    """A made-up format: ``.toy`` text files with one number per line, half-hourly from 2000-01-01."""

    name = "toy"
    description = "one Tair value [K] per line, .toy"
    priority = 5
    options = {"start": "first time step"}

    def detect(self, path: Path) -> bool:
        return path.suffix == ".toy" or path.read_bytes().startswith(b"TOY")

    def read(self, path: Path, start: str = "2000-01-01") -> xr.Dataset:
        values = [float(x) for x in path.read_text().split()[1:]]
        time = np.datetime64(start) + np.arange(len(values)) * np.timedelta64(30, "m")
        return xr.Dataset({"Tair": ("time", values)}, coords={"time": time},
                          attrs={"source_format": self.name, "time_step_s": 1800.0})


@pytest.fixture
def toy_registry(monkeypatch):
    monkeypatch.setattr(readers, "_REGISTRY", dict(readers._REGISTRY))
    register_reader(_ToyReader)
    return readers


def test_a_new_format_is_one_registration(toy_registry, tmp_path, shared_data):
    toy = tmp_path / "site.toy"
    toy.write_text("TOY\n280.0\n281.5\n")
    assert available_formats()[0] == "toy"  # priority 5: asked first
    assert detect_format(toy) == "toy"
    # priority: a .csv starting with TOY is claimed by the toy reader before the CSV readers
    csv = tmp_path / "site.csv"
    csv.write_text("TOY\n1\n")
    assert detect_format(csv) == "toy"
    ds = read_site(toy, start="2001-06-01")
    assert ds["Tair"].values.tolist() == [280.0, 281.5] and ds["time"].values[0] == np.datetime64("2001-06-01T00:00")
    # read_sites gives each reader only the options it declares
    at_neu = shared_data / "fluxnet" / "AT-Neu_201007-201007_HH.csv"
    both = read_sites([toy, at_neu], start="2002-01-01")
    assert [d.attrs["source_format"] for d in both] == ["toy", "fluxnet-csv-HH"]
    with pytest.raises(ValueError, match="format 'fluxnet-csv' is already registered"):
        register_reader(type("OtherCsv", (_ToyReader,), {"name": "fluxnet-csv"}))
    with pytest.raises(TypeError, match="is not a Reader"):
        register_reader(object())


def test_unknown_file_format_lists_the_formats(tmp_path):
    p = tmp_path / "data.xlsx"
    p.write_bytes(b"PK\x03\x04")
    with pytest.raises(DataError, match=r"data.xlsx: unknown file format '.xlsx'; expected one of: ameriflux-base \(AmeriFlux BASE CSV"):
        detect_format(p)
    with pytest.raises(DataError, match="nothere.nc: no such file"):
        read_site(tmp_path / "nothere.nc", format="plumber2")
