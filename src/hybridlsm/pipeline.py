"""``hybridlsm run``: train every model a config names on the same data and split, predict the test
periods, and write the run directory (docs/architecture.md §3).

Experiments:

- time split (fractions or dates): one experiment over all sites; each model is trained on every
  site's training block (one model for all sites), validated on the validation blocks and predicts
  each site's whole record (scored on its test block);
- leave-one-site-out: one experiment per site; the model is trained on the other sites (the last
  ``val`` fraction of their records validates) and predicts the left-out site.

The rollout models see whole records with a ``loss_mask`` variable marking the steps their loss may
use, so their state runs continuously through spin-up, training, validation and test periods.
An interrupted run resumes: finished (model, site) predictions are kept and training restarts from
the last checkpoint.
"""

from __future__ import annotations

import inspect
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr
from rich.console import Console

from .data import (
    TEST,
    TRAIN,
    UNUSED,
    VALIDATION,
    prepare_forcing,
    read_plumber2,
    read_site,
    split_by_time,
)
from .data.virtual import virtual_site
from .models.registry import get_model, validate_options
from .training.config import RunConfig, load_config, write_config

console = Console(stderr=True)

#: Observed variables copied to ``predictions/<site>/obs.nc`` (with their QC flags).
OBS_VARIABLES = ("Qh", "Qle", "Qg", "Rnet", "Qh_cor", "Qle_cor", "SoilTemp", "SoilMoistVol", "Precip",
                 "SWdown", "Tair", "Wind")  # fmt: skip


#: Units of model outputs that are not observed variables (ALMA conventions).
MODEL_OUTPUT_UNITS = {
    "Qh": "W m-2", "Qle": "W m-2", "Qg": "W m-2", "Rnet": "W m-2", "Qf": "W m-2", "Evap": "kg m-2 s-1",
    "Qs": "kg m-2 s-1", "Qsb": "kg m-2 s-1", "SoilTemp": "K", "SoilMoist": "kg m-2", "SWE": "kg m-2",
    "GWS": "kg m-2", "AvgSurfT": "K", "SR": "J m-2", "Kh": "m2 s-1", "ra": "s m-1", "rs": "s m-1", "RiB": "1",
}  # fmt: skip


@dataclass
class Experiment:
    name: str
    train: list[xr.Dataset]
    val: list[xr.Dataset]
    test: list[xr.Dataset]
    split_kind: str = "test"
    labels: dict[str, np.ndarray] = field(default_factory=dict)


# ----------------------------------------------------------------------------------- data


def load_sites(cfg: RunConfig) -> list[xr.Dataset]:
    """Read every site of the config and make its forcing gap-free (filled values are flagged)."""
    out = []
    for spec in cfg.data.sites:
        if spec.path is not None:
            ds = read_site(spec.path)
        elif spec.plumber is not None:
            ds = read_plumber2(spec.plumber.met, spec.plumber.flux)
        else:
            v = spec.virtual
            ds = virtual_site(site_id=v.site_id, igbp=v.igbp, days=v.days, time_step_s=v.time_step_s,
                              start=v.start, latitude=v.latitude, longitude=v.longitude, seed=v.seed,
                              noise=v.noise)  # fmt: skip
        out.append(prepare_forcing(ds))
    ids = [ds.attrs["site_id"] for ds in out]
    dup = sorted({s for s in ids if ids.count(s) > 1})
    if dup:
        raise ValueError(f"site(s) {dup} appear more than once in data.sites; give each site once")
    return out


def _with_mask(ds: xr.Dataset, mask: np.ndarray) -> xr.Dataset:
    out = ds.copy()
    out["loss_mask"] = ("time", np.asarray(mask, bool))
    return out


def _time_labels(ds: xr.Dataset, cfg: RunConfig) -> np.ndarray:
    split = cfg.data.split
    spin = int(round(cfg.data.spinup_days * 86400.0 / float(ds.attrs["time_step_s"])))
    if split.mode == "fractions":
        lab = split_by_time(ds, (split.train, split.val, split.test), spinup_steps=spin)
        return np.asarray(lab.values)
    t = ds["time"].values
    labels = np.zeros(t.size, np.int8)
    for value, (start, end) in ((TRAIN, split.train), (VALIDATION, split.val), (TEST, split.test)):
        sel = (t >= np.datetime64(start)) & (t < np.datetime64(end) + np.timedelta64(1, "D"))
        labels[sel] = value
    labels[:spin] = UNUSED
    return labels


def experiments(cfg: RunConfig, sites: list[xr.Dataset]) -> list[Experiment]:
    split = cfg.data.split
    if split.mode != "leave_one_site_out":
        labels = {ds.attrs["site_id"]: _time_labels(ds, cfg) for ds in sites}
        return [Experiment(
            "all",
            [_with_mask(ds, labels[ds.attrs["site_id"]] == TRAIN) for ds in sites],
            [_with_mask(ds, labels[ds.attrs["site_id"]] == VALIDATION) for ds in sites],
            sites, "test", labels,
        )]  # fmt: skip
    if len(sites) < 2:
        raise ValueError("leave_one_site_out needs at least 2 sites")
    exps = []
    for test in sites:
        others = [ds for ds in sites if ds is not test]
        train, val = [], []
        for ds in others:
            lab = np.asarray(split_by_time(ds, (1.0 - split.val, split.val, 0.0)).values)
            train.append(_with_mask(ds, lab == TRAIN))
            val.append(_with_mask(ds, lab == VALIDATION))
        sid = test.attrs["site_id"]
        exps.append(Experiment(f"loso-{sid}", train, val, [test], "loso",
                               {sid: np.full(test.sizes["time"], TEST, np.int8)}))  # fmt: skip
    return exps


# ------------------------------------------------------------------------------ outputs


def _write_nc(ds: xr.Dataset, path: Path) -> None:
    """Write atomically (a finished file is never half-written; resume trusts what exists)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".nc.tmp")
    ds.to_netcdf(tmp)
    tmp.replace(path)


def write_obs(site: xr.Dataset, labels: np.ndarray, split_kind: str, path: Path) -> None:
    keep = [v for v in OBS_VARIABLES if v in site]
    keep += [f"{v}_qc" for v in keep if f"{v}_qc" in site]
    obs = site[keep].copy()
    obs["split"] = ("time", np.asarray(labels, np.int8), {"flag_values": "0 1 2 3",
                    "flag_meanings": "unused_or_spinup train validation test"})  # fmt: skip
    obs.attrs = {k: v for k, v in site.attrs.items() if isinstance(v, (str, int, float))}
    obs.attrs["split_kind"] = split_kind
    _write_nc(obs, path)


def write_predictions(pred: dict[str, np.ndarray], site: xr.Dataset, model: str, config: str, path: Path) -> None:
    from .data.schema import VARIABLES

    data = {}
    for name, values in pred.items():
        values = np.asarray(values, dtype=np.float64)
        dims = ("time", "soil_layer")[: values.ndim]
        unit = MODEL_OUTPUT_UNITS.get(name, VARIABLES[name].units if name in VARIABLES else None)
        attrs = {} if unit is None else {"units": unit}
        data[name] = (dims, values, attrs)
    ds = xr.Dataset(data, coords={"time": site["time"].values})
    if "SoilTemp" in pred and np.ndim(pred["SoilTemp"]) == 2:
        from .physics import LAYER_THICKNESS, layer_centres

        ds = ds.assign_coords(soil_layer=np.asarray(layer_centres(LAYER_THICKNESS)))
        ds["soil_layer_thickness"] = ("soil_layer", np.asarray(LAYER_THICKNESS), {"units": "m"})
    ds.attrs.update(model=model, site=site.attrs["site_id"], config=config)
    _write_nc(ds, path)


# ------------------------------------------------------------------------------------ run


def prepare_run_dir(cfg: RunConfig, config_name: str, resume: bool) -> Path:
    run_dir = Path(cfg.output.run_dir) / cfg.name
    if run_dir.exists() and any(run_dir.iterdir()) and not resume:
        if not cfg.output.overwrite:
            raise FileExistsError(
                f"run directory {run_dir} exists; pass --resume to continue it, or set output.overwrite: true "
                "(or --overwrite) to replace it"
            )
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_config(cfg, run_dir / "config.yaml")
    return run_dir


def _train(spec, model, train, val, cfg, ckpt, options):
    kwargs = {"options": options} if "options" in inspect.signature(spec.train).parameters else {}
    return spec.train(model, train, val, cfg, ckpt, **kwargs)


def run(cfg: RunConfig, config_name: str = "<config>", resume: bool = False) -> Path:
    """Train, predict and report; returns the run directory."""
    from .evaluation.report import build_report

    run_dir = prepare_run_dir(cfg, config_name, resume)
    sites = load_sites(cfg)
    timings_path = run_dir / "timings.json"
    timings = json.loads(timings_path.read_text()) if resume and timings_path.exists() else {}
    for exp in experiments(cfg, sites):
        for ds in exp.test:
            sid = ds.attrs["site_id"]
            write_obs(ds, exp.labels[sid], exp.split_kind, run_dir / "predictions" / sid / "obs.nc")
        for entry in cfg.models:
            label = entry.label or entry.name
            targets = [run_dir / "predictions" / ds.attrs["site_id"] / f"{label}.nc" for ds in exp.test]
            if resume and all(p.exists() for p in targets):
                console.print(f"[dim]{exp.name}/{label}: predictions exist, skipped (resume)[/dim]")
                continue
            console.print(f"[bold]{exp.name}[/bold]: training [cyan]{label}[/cyan] on "
                          f"{', '.join(d.attrs['site_id'] for d in exp.train)}")  # fmt: skip
            spec = get_model(entry.name)
            options = validate_options(entry.name, entry.options)
            t0 = time.perf_counter()
            model = spec.build(options, exp.train)
            model = _train(spec, model, exp.train, exp.val, cfg, run_dir / "checkpoints" / label / exp.name, options)
            t_train = time.perf_counter() - t0
            for ds, path in zip(exp.test, targets):
                write_predictions(spec.predict(model, ds), ds, label, config_name, path)
            timings[f"{exp.name}/{label}"] = {"train_s": round(t_train, 2),
                                              "total_s": round(time.perf_counter() - t0, 2)}  # fmt: skip
            console.print(f"  {label}: trained in {t_train:.1f} s")
    timings_path.write_text(json.dumps(timings, indent=1))  # resumed runs keep earlier timings
    report = build_report(run_dir, config_name=config_name)
    console.print(f"report: [green]{report}[/green]")
    return run_dir


def run_config_file(path: str | Path, resume: bool = False, overwrite: bool = False) -> Path:
    cfg = load_config(path)
    if overwrite:
        cfg = cfg.model_copy(update={"output": cfg.output.model_copy(update={"overwrite": True})})
    return run(cfg, config_name=str(path), resume=resume)
