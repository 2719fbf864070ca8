"""`hybridlsm data inspect`: closure ratios of the 8 development files against README §5.4."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from hybridlsm.cli import app

# README §5.4: EBR all rows (n), EBR QC = 0 rows (n); FR-Pue 2012 has no G (closure without G)
README = {
    "US-Wkg_200405-200412_HH.csv": (0.930, 10433, 0.930, 10433, True),
    "US-Me2_201907-202006_HH.csv": (0.835, 17568, 0.835, 17568, True),
    "US-Bi1_201807-202006_HH.csv": (0.755, 35088, 0.755, 35088, True),
    "DE-Tha_201001-201012_HH.csv": (0.717, 17492, 0.723, 15886, True),
    "FR-Pue_200501-200512_HH.csv": (0.620, 17446, 0.648, 11584, True),
    "AT-Neu_201007-201007_HH.csv": (0.761, 1488, 0.741, 824, True),
    "DE-Tha_201406-201406_HH.csv": (0.703, 1440, 0.699, 1379, True),
    "FR-Pue_201205-201205_HH.csv": (0.642, 1484, 0.645, 1152, False),
}

runner = CliRunner()


@pytest.fixture(scope="module")
def paths(shared_data):
    return [str(shared_data / "fluxnet" / name) for name in README]


@pytest.fixture(scope="module")
def json_reports(paths):
    result = runner.invoke(app, ["data", "inspect", *paths, "--json"])
    assert result.exit_code == 0, result.output
    return {r["file"].split("/")[-1]: r for r in json.loads(result.stdout)}


def test_inspect_json_closure_matches_readme(json_reports):
    assert set(json_reports) == set(README)
    for name, (ebr, n, _, _, with_g) in README.items():
        c = json_reports[name]["closure"]
        assert round(c["ratio"], 3) == ebr, name
        assert c["n"] == n, name
        assert c["with_ground_heat"] is with_g, name
    note = json_reports["FR-Pue_201205-201205_HH.csv"]["closure"]["note"]
    assert "no ground heat flux (Qg)" in note and "without G" in note


def test_inspect_json_period_step_variables(json_reports):
    wkg = json_reports["US-Wkg_200405-200412_HH.csv"]
    assert (wkg["site_id"], wkg["start"], wkg["end"]) == ("US-Wkg", "2004-05-06 11:00:00", "2004-12-31 23:30:00")
    assert wkg["n_steps"] == 11497 and wkg["time_step_s"] == 1800.0
    v = {x["name"]: x for x in wkg["variables"]}
    assert v["Qle"]["valid_fraction"] == 0.9075 and v["Qle"]["units"] == "W m-2" and v["Qle"]["qc"] == "flags"
    assert v["Tair"]["units"] == "K" and v["Psurf"]["units"] == "Pa" and v["Precip"]["units"] == "kg m-2 s-1"
    assert wkg["gaps_over_1d"] == {} and wkg["igbp"] == "GRA"
    # sites.csv states no measurement height for US-Wkg (README §2): listed and warned, nothing else
    assert wkg["missing_metadata"] == ["measurement_height"] and wkg["repairs"] == []
    assert len(wkg["warnings"]) == 1 and "site US-Wkg: no measurement_height" in wkg["warnings"][0]
    assert json_reports["DE-Tha_201001-201012_HH.csv"]["missing_metadata"] == []
    tha = json_reports["DE-Tha_201001-201012_HH.csv"]
    assert [g["hours"] for g in tha["gaps_over_1d"]["Ustar"]] == [105.5, 31.0, 43.5, 77.5]
    assert json_reports["US-Me2_201907-202006_HH.csv"]["variables"][0]["qc"] == "none"
    assert any("67 of 17568 values outside" in w for w in json_reports["US-Me2_201907-202006_HH.csv"]["warnings"])
    assert json_reports["US-Bi1_201807-202006_HH.csv"]["start"] == "2018-06-30 23:30:00"


def test_inspect_max_qc_zero(paths):
    # the files with QC flags (US-Me2 and US-Bi1 have none: README gives no QC = 0 ratio)
    with_qc = [p for p in paths if "US-Me2" not in p and "US-Bi1" not in p]
    me2 = next(p for p in paths if "US-Me2" in p)
    result = runner.invoke(app, ["data", "inspect", *with_qc, me2, "--json", "--max-qc", "0"])
    assert result.exit_code == 0, result.output
    reports = {r["file"].split("/")[-1]: r for r in json.loads(result.stdout)}
    c = reports.pop("US-Me2_201907-202006_HH.csv")["closure"]
    assert (round(c["ratio"], 3), c["n"], c["qc_applied"]) == (0.835, 17568, False)
    assert "no QC flags in the file: all steps used" in c["note"]
    assert len(reports) == 6
    for name, (_, _, ebr0, n0, _) in README.items():
        if name not in reports:
            continue
        c = reports[name]["closure"]
        assert (round(c["ratio"], 3), c["n"], c["max_qc"], c["qc_applied"]) == (ebr0, n0, 0, True), name
        assert c["note"].endswith("Qh, Qle QC <= 0")


def test_inspect_table_output(paths):
    result = runner.invoke(app, ["data", "inspect", *paths])
    assert result.exit_code == 0, result.output
    out = result.stdout
    for name, (ebr, n, *_rest) in README.items():
        row = next(line for line in out.splitlines() if name in line and "│" in line)
        assert f"{ebr:.3f}" in row and str(n) in row, row
    assert "closure without G" in out
    assert "US-Wkg_200405-200412_HH.csv: variables" in out
    assert "2004-05-06 11:00 .. 2004-12-31 23:30" in out


def test_inspect_bad_file_exit_code(tmp_path, paths):
    bad = tmp_path / "US-Wkg_200405-200412_HH.csv"
    bad.write_text("TIMESTAMP_START,TIMESTAMP_END,TA_F\n200405061100,200405061130\n")
    result = runner.invoke(app, ["data", "inspect", str(bad), paths[-1], "--json"])
    assert result.exit_code == 1
    reports = json.loads(result.stdout)
    assert "line 2 has 2 fields, expected 3" in reports[0]["error"]
    assert round(reports[1]["closure"]["ratio"], 3) == 0.642


def test_inspect_other_formats(shared_data):
    orig = shared_data / "fluxnet" / "original"
    result = runner.invoke(app, ["data", "inspect", "--json",
                                 str(orig / "US-Wi7_2005-2005_FLUXNET2015_Met.nc"),
                                 str(orig / "AMF_US-Wkg_FLUXNET_FULLSET_MM_2004-2021_3-5.csv"),
                                 str(shared_data / "gridded" / "Stehekin_image_test.forcings_10days.0.0625_deg.1949.nc")])
    assert result.exit_code == 0, result.output
    wi7, mm, grid = json.loads(result.stdout)
    assert wi7["closure"]["with_ground_heat"] is False and round(wi7["closure"]["ratio"], 3) == 0.637
    assert wi7["closure"]["n"] == 7536
    assert mm["time_resolution"] == "MM" and mm["end"] == "2022-01-01 00:00:00" and mm["closure"]["n"] == 212
    assert grid["dims"] == {"time": 240, "y": 8, "x": 10} and grid["closure"]["ratio"] is None
    assert {v["name"]: v["valid_fraction"] for v in grid["variables"]}["Tair"] == 0.8  # 64 of 80 cells


def test_inspect_new_formats_missing_metadata_and_repairs(shared_data):
    orig = shared_data / "fluxnet" / "original"
    result = runner.invoke(app, ["data", "inspect", "--json", str(orig / "AMF_US-CRT_BASE_HH_2-5.csv"),
                                 str(orig / "CN-Cng_2008-2009_FLUXNET2015_Met.nc")])
    assert result.exit_code == 0, result.output
    crt, cng = json.loads(result.stdout)
    # AmeriFlux BASE in original/ (no sites.csv there): every site field missing, listed and warned
    assert crt["format"] == "ameriflux-base" and crt["n_steps"] == 17520 and crt["igbp"] == ""
    assert crt["missing_metadata"] == ["latitude", "longitude", "elevation", "igbp", "canopy_height",
                                       "measurement_height", "utc_offset_h"]
    assert any("site US-CRT: no latitude, longitude" in w for w in crt["warnings"])
    assert len(crt["repairs"]) == 2 and "Qg from replicate columns G_1_1_1, G_2_1_1: 395 step(s)" in crt["repairs"][0]
    # README §5.4 (US-CRT): EBR 0.755 over 8 308 steps, the same with the BASE reader
    assert round(crt["closure"]["ratio"], 3) == 0.755 and crt["closure"]["n"] == 8308
    # the CN-Cng pair: aligned (one Met step dropped), no UTC offset in the files
    assert cng["n_steps"] == 35088 and cng["missing_metadata"] == ["utc_offset_h"] and cng["igbp"] == "GRA"
    assert cng["repairs"] == [f"{orig / 'CN-Cng_2008-2009_FLUXNET2015_Met.nc'}: dropped time 2010-01-01 00:00 "
                              "(not in CN-Cng_2008-2009_FLUXNET2015_Flux.nc; an exact repeat of 2009-12-31 23:30 "
                              "in all 8 variables)"]
    # README §5.4 gives 0.968 over 32 052 steps for the canonical file, which keeps Rnet only where
    # its PLUMBER2 qc is 0; read from the pair, Rnet keeps its 3 036 qc-5 (statistically gap-filled)
    # values, so the closure covers all 35 088 steps and differs (the closure QC applies to Qh, Qle only)
    assert round(cng["closure"]["ratio"], 3) == 1.013 and cng["closure"]["n"] == 35088


def test_a_killed_commands_matplotlib_folder_is_removed_by_the_next(tmp_path):
    """The CLI gives matplotlib a temporary folder removed at exit; a SIGKILLed command cannot
    remove its own, so the next one removes the folders whose owner file no process holds locked,
    and only those: a running process's (locked), a folder without an owner file, another host's."""
    import fcntl
    import subprocess
    import sys

    from hybridlsm.cli import MATPLOTLIB_DIR_OWNER, MATPLOTLIB_DIR_PREFIX, _remove_orphaned_matplotlib_dirs

    def folder(name: str, owner: bool = True):
        path = tmp_path / f"{MATPLOTLIB_DIR_PREFIX}{name}"
        (path / "fontlist").mkdir(parents=True)
        if owner:
            (path / MATPLOTLIB_DIR_OWNER).touch()
        return path

    killed, running, ownerless, elsewhere = (folder("host-a1"), folder("host-b2"), folder("host-c3", owner=False),
                                             folder("otherhost-d4"))
    fd = os.open(running / MATPLOTLIB_DIR_OWNER, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # this process runs
    # a process that holds its folder's lock, then is killed: the kernel releases the lock
    code = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX); "
            "print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(killed / MATPLOTLIB_DIR_OWNER)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert _remove_orphaned_matplotlib_dirs(tmp_path, host="host") == []  # every owner still runs
        holder.kill()
        holder.wait()
        assert _remove_orphaned_matplotlib_dirs(tmp_path, host="host") == [killed]
    finally:
        os.close(fd)
        holder.kill()
    assert not killed.exists() and running.is_dir() and ownerless.is_dir() and elsewhere.is_dir()
