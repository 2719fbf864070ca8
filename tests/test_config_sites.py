"""Sites in a run config: ``{path, format, options}`` and its shorthands, round trip, and the errors
of a bad format or reader option, which name the site entry (``read_site_spec``/``load_domains``)."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml

from hybridlsm.config import ConfigError, SiteSpec, load_config, validate_config, write_config
from hybridlsm.data import DataError, DataWarning
from hybridlsm.pipeline import load_domains, read_site_spec

WKG = "US-Wkg_200405-200412_HH.csv"
BASE = "AMF_US-CRT_BASE_HH_2-5.csv"


def run_config(sites: list, base_dir: Path, check_paths: bool = True):
    data = {"name": "sites", "data": {"sites": sites}, "models": [{"name": "lstm"}]}
    return validate_config(data, base_dir=base_dir, source="run.yaml", check_paths=check_paths)


@pytest.fixture
def files(tmp_path: Path) -> Path:
    for rel in ("A_HH.csv", "B_Met.nc", "B_Flux.nc"):
        (tmp_path / rel).write_text("x")
    return tmp_path


SITES = [
    "A_HH.csv",
    {"path": "A_HH.csv"},
    {"path": "A_HH.csv", "format": "fluxnet-csv"},
    {"path": "A_HH.csv", "options": {"depths": {"SoilTemp": 0.05}}},
    {"path": "A_HH.csv", "format": "fluxnet-csv", "options": {"depths": {"SoilTemp": 0.16, "SoilMoistVol": 0.1}, "site_id": "US-Me2"}},
    {"met": "B_Met.nc", "flux": "B_Flux.nc"},
    {"virtual": {"igbp": "ENF", "days": 30}},
]  # fmt: skip


def test_site_forms(files):
    sites = run_config(SITES, files).data.sites
    a = (files / "A_HH.csv").resolve()
    assert [s.kind for s in sites] == ["csv"] * 5 + ["plumber", "virtual"]
    assert [(s.path, s.format, s.options) for s in sites[:4]] == [
        (a, None, {}), (a, None, {}), (a, "fluxnet-csv", {}), (a, None, {"depths": {"SoilTemp": 0.05}}),
    ]  # fmt: skip
    assert sites[4].options == {"depths": {"SoilTemp": 0.16, "SoilMoistVol": 0.1}, "site_id": "US-Me2"}
    assert sites[5].plumber.met == (files / "B_Met.nc").resolve() and sites[5].format is None
    assert sites[6].virtual.igbp == "ENF" and sites[6].options == {}


def test_round_trip_and_shorthand_serialisation(files):
    cfg = run_config(SITES, files)
    write_config(cfg, files / "written.yaml")
    assert load_config(files / "written.yaml") == cfg
    a = str((files / "A_HH.csv").resolve())
    written = yaml.safe_load((files / "written.yaml").read_text())["data"]["sites"]
    assert written[:5] == [
        a,
        a,
        {"path": a, "format": "fluxnet-csv"},
        {"path": a, "options": {"depths": {"SoilTemp": 0.05}}},
        {"path": a, "format": "fluxnet-csv", "options": {"depths": {"SoilTemp": 0.16, "SoilMoistVol": 0.1}, "site_id": "US-Me2"}},
    ]  # fmt: skip
    assert written[5] == {"met": str((files / "B_Met.nc").resolve()), "flux": str((files / "B_Flux.nc").resolve())}
    assert set(written[6]) == {"virtual"}


@pytest.mark.parametrize(
    ("site", "message"),
    [
        ({"path": "A_HH.csv", "fromat": "fluxnet-csv"},
         "data.sites[0]: unknown key 'fromat'; allowed keys: format, options, path, plumber, virtual"),
        ({"path": "A_HH.csv", "format": ""}, "data.sites[0].format: String should have at least 1 character (got '')"),
        ({"path": "A_HH.csv", "options": [1]}, "data.sites[0].options: Input should be a valid dictionary"),
        ({"format": "fluxnet-csv"}, "data.sites[0]: a site is exactly one of: a file path, a PLUMBER2 pair, a virtual site; got none"),
        ({"virtual": {}, "options": {"depths": {"SoilTemp": 0.05}}},
         "data.sites[0]: 'format' and 'options' apply only to a site given by 'path', not to a virtual site"),
        ({"met": "B_Met.nc", "flux": "B_Flux.nc", "format": "plumber2"},
         "data.sites[0]: a PLUMBER2 site needs exactly the keys 'met' and 'flux'; unknown ['format']"),
        (3, "data.sites[0]: a site is a file path, {path: PATH, format: NAME, options: {...}}, "
            "{met: PATH, flux: PATH} or {virtual: {...}} (got 3)"),
        ([WKG], "data.sites[0]: a site is a file path, {path: PATH, format: NAME, options: {...}}, "
                "{met: PATH, flux: PATH} or {virtual: {...}}"),
    ],
)  # fmt: skip
def test_site_errors_name_the_key(files, site, message):
    with pytest.raises(ConfigError) as err:
        run_config([site], files)
    assert str(err.value).splitlines() == ["invalid config run.yaml:", f"  {message}"]


def _spec(shared_data: Path, site: dict) -> SiteSpec:
    return run_config([site], shared_data / "fluxnet").data.sites[0]


def test_format_and_options_reach_the_reader(shared_data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        wkg = read_site_spec(_spec(shared_data, {"path": WKG, "options": {"depths": {"SoilTemp": 0.05}}}))
        crt = read_site_spec(_spec(shared_data, {
            "path": f"original/{BASE}", "format": "ameriflux-base",
            "options": {"sites": str(shared_data / "fluxnet" / "sites.csv"),
                        "depths": {"SoilTemp": 0.02, "SoilMoistVol": 0.3}},  # values of this test only
        }))  # fmt: skip
    assert wkg.attrs["source_format"] == "fluxnet-csv-HH"
    assert wkg["SoilTemp"].attrs["depth_m"] == 0.05 and np.isnan(wkg["SoilMoistVol"].attrs["depth_m"])
    assert crt.attrs["source_format"] == "ameriflux-base" and crt.attrs["igbp"] == "CRO"
    assert (crt["SoilTemp"].attrs["depth_m"], crt["SoilMoistVol"].attrs["depth_m"]) == (0.02, 0.3)


@pytest.mark.parametrize(
    ("site", "message"),
    [
        ({"path": WKG, "format": "fluxnet"},
         "unknown data format 'fluxnet'; available formats: ameriflux-base, fluxnet-csv, plumber2, wrf, gridded"),
        ({"path": WKG, "options": {"depht": {"SoilTemp": 0.05}}},
         "reader 'fluxnet-csv': unknown option(s) ['depht']; allowed: depths, metadata, site_id, sites"),
        ({"path": WKG, "format": "plumber2", "options": {"depths": {"SoilTemp": 0.05}}},
         "reader 'plumber2': unknown option(s) ['depths']; allowed: find_partner, metadata, other, sites"),
    ],
)  # fmt: skip
def test_bad_format_or_option_names_the_site_entry(shared_data, site, message):
    cfg = run_config([site], shared_data / "fluxnet")
    with pytest.raises(ConfigError) as err:
        load_domains(cfg)
    assert str(err.value) == f"data.sites entry {shared_data.resolve() / 'fluxnet' / WKG}: {message}"


def test_bad_option_value_names_the_file_and_option(shared_data):
    spec = _spec(shared_data, {"path": WKG, "options": {"depths": {"SoilTemp": -0.05}}})
    with warnings.catch_warnings(), pytest.raises(DataError) as err:
        warnings.simplefilter("ignore", DataWarning)
        read_site_spec(spec)
    assert str(err.value) == (
        f"{spec.path}: option depths: SoilTemp depth -0.05 is not a positive number of metres "
        "(0 < depth <= 2, e.g. 0.05 for 5 cm)"
    )
