"""``hybridlsm run``: train every model a config names on the same data and split, save the trained
models, predict the test periods and write the run directory (docs/architecture.md §3).

Experiments (``data.split``):

- time split (fractions, dates or ``blocked``): one experiment over all sites; each model is trained
  on every site's training steps (one model for all sites), validated on the validation steps and
  predicts each site's whole record (scored on its test steps);
- leave-one-site-out: one experiment per site; the model is trained on the other sites (the last
  ``val`` fraction of their records validates) and predicts the left-out site;
- ``test_sites``: one experiment; trained on the other sites as in leave-one-site-out, scored on
  the named sites whole (the PLUMBER protocol).

Every site is a one-column :class:`~hybridlsm.domain.Domain` (sites have their own periods); its
``loss_mask`` marks the steps a model's loss may use, so rollout models run continuously through
spin-up, training, validation and test periods. A regional run (``data.grid``) has one grid Domain
and a time split; its outputs are maps, ``maps/<grid>/<model>.nc`` on (time, y, x) beside the
observations ``maps/<grid>/obs.nc``, and the cells with observed fluxes (towers) are also written and
scored as sites (``predictions/<grid>_y<i>_x<j>/``). Trained models are saved under
``models/<label>/<experiment>/`` (``hybridlsm predict`` applies them elsewhere). An interrupted run
resumes: finished (model, experiment) predictions that verify against their checksums are kept (a
damaged one is recomputed) and training restarts from the last good checkpoint. A run holds the
lock of its run directory (``rundir.hold_run_lock``), so a second process on it is refused.

Several processes (``jax.distributed``, ``hybridlsm run --coordinator``) train one run together:
every process reads the data and trains the same models, each computing the shards of its own
devices (``training.sharding``; ``training.devices`` spans the job's devices), and only process 0
writes the run directory (its folder, checkpoints, saved models, predictions, report); the others
write nothing and learn from process 0 whether preparing and finishing the run directory
succeeded (``process_zero_writes``).
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import jax
import numpy as np
import xarray as xr
from pydantic import BaseModel
from rich.console import Console

from .config import DEFAULT_TARGETS, ConfigError, GridSpec, RunConfig, SiteSpec, write_config
from .data import (
    TEST,
    TRAIN,
    UNUSED,
    VALIDATION,
    DataError,
    DataWarning,
    add_derived,
    detect_format,
    get_reader,
    prepare_forcing,
    read_plumber2,
    read_site,
    repair_summary,
    split_by_time,
)
from .data.splits import blocked_labels, held_out_labels, usable_targets
from .data.virtual import virtual_site
from .data.virtual_region import virtual_region
from .domain import (
    Domain,
    domain_from_grid,
    domain_from_site,
    site_file_name,
    write_grid_outputs,
    write_netcdf,
    write_site_outputs,
)
from .models.registry import (ModelSpec, SavedModelError, TrainingContext, get_model, load_run_config,
                              time_step_among, trained_key, training_time_steps)
from .rundir import (OVERWRITE, REPLACED, DamagedRunFile, atomic_write, finish_run_dir, problem, read_json_object,
                     restore_replaced, run_lock, sha256_of, unfinished_dir)
from .training import TrainingError
from .training.sharding import cell_mesh, on_this_process

console = Console(stderr=True)

#: Observed variables copied to ``predictions/<site>/obs.nc`` (with their QC flags); Kh_true and
#: RiB_true are the known truth of a twin experiment's virtual site.
OBS_VARIABLES = ("Qh", "Qle", "Qg", "Rnet", "Qh_cor", "Qle_cor", "AvgSurfT", "SoilTemp", "SoilMoistVol", "Precip",
                 "SWdown", "Tair", "Wind", "VPD", "Psurf", "Ustar", "Kh_true", "RiB_true")  # fmt: skip
#: reader formats whose files are grids (every other format is one site)
GRID_FORMATS = ("gridded", "wrf")
#: flux targets whose observation at a grid cell makes it a tower cell (scored as a site)
TOWER_FLUXES = ("Qh", "Qle", "Qh_cor", "Qle_cor")
SPLIT_ATTRS = {"flag_values": "0 1 2 3", "flag_meanings": "unused_or_spinup train validation test"}


@dataclass
class Experiment:
    """Training, validation and test Domains of one experiment, and the split labels of its test
    sites (``shared_parameters``: the test sites are not training sites)."""

    name: str
    train: list[Domain]
    val: list[Domain]
    test: list[Domain]
    split_kind: str = "test"
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    shared_parameters: bool = False


# ----------------------------------------------------------------------------------- data


def read_site_spec(spec: SiteSpec) -> xr.Dataset:
    """The canonical dataset of one configured site (not yet gap-filled).

    A file is read by the reader ``spec.format`` (default: detected) with ``spec.options``; an
    unknown format or an option that reader does not declare is a ConfigError naming the site entry
    and what is allowed.
    """
    if spec.path is not None:
        fmt = spec.format or detect_format(spec.path)
        try:
            get_reader(fmt).check_options(spec.options)
        except (DataError, TypeError) as err:
            raise ConfigError(f"data.sites entry {spec.path}: {err}") from None
        return read_site(spec.path, format=fmt, **spec.options)
    if spec.plumber is not None:
        return read_plumber2(spec.plumber.met, spec.plumber.flux)
    v = spec.virtual
    return virtual_site(site_id=v.site_id, igbp=v.igbp, days=v.days, time_step_s=v.time_step_s, start=v.start,
                        latitude=v.latitude, longitude=v.longitude, seed=v.seed, noise=v.noise, truth=v.truth,
                        gap_fraction=v.gap_fraction, surface_temperature_noise=v.surface_temperature_noise)  # fmt: skip


def read_grid_file(path: Path, fmt: str | None = None, options: dict | None = None) -> Domain:
    """A gridded file (a reader of :data:`GRID_FORMATS`) as the Domain of its cells with forcing
    (``domain_from_grid``: a gap is refused), humidity in every form; its land cover where it has one."""
    given, fmt = fmt, fmt or detect_format(path)
    if fmt not in GRID_FORMATS:
        hint = ("" if given or fmt != "plumber2" else " (detected from the file: a grid of one cell reads as a "
                "PLUMBER2 site; give data.grid: {path: ..., format: gridded} to read it as a grid)")
        raise ConfigError(f"{path}: format {fmt!r} is not a gridded format; expected one of {GRID_FORMATS}{hint}")
    try:
        get_reader(fmt).check_options(options or {})
    except (DataError, TypeError) as err:
        raise ConfigError(f"data.grid {path}: {err}") from None
    grid = add_derived(read_site(path, format=fmt, **(options or {})), variables=("VPD", "RH", "Qair"))
    return domain_from_grid(grid, name=Path(path).stem)


def read_grid_spec(spec: GridSpec) -> Domain:
    """The configured grid as a Domain; cells without a land-cover class get ``spec.igbp`` (said)."""
    if spec.virtual_region is not None:
        v = spec.virtual_region
        ds = virtual_region(v.ny, v.nx, v.days, site=v.site, start=str(v.start), spin_up_days=v.spin_up_days,
                            seed=v.seed, albedo_noise=v.albedo_noise)
        domain = domain_from_grid(ds, name="virtual_region")
    else:
        domain = read_grid_file(spec.path, spec.format, spec.options)
    igbp = domain.static_value("igbp").astype(str)
    unknown = igbp == ""
    if unknown.any() and spec.igbp is not None:
        static = domain.static.copy()
        static["igbp"] = ("column", np.where(unknown, spec.igbp, igbp).astype(object), dict(domain.static["igbp"].attrs))
        domain = replace(domain, static=static)
        console.print(f"{domain.name}: {int(unknown.sum())} of {domain.n_columns} cells have no land cover in the "
                      f"file; data.grid.igbp gives them {spec.igbp}")
    return domain


def tower_columns(d: Domain, targets: Sequence[str]) -> np.ndarray:
    """Positions of the columns where a flux target is observed at any step (all columns of a site
    Domain)."""
    if d.kind != "grid":
        return np.arange(d.n_columns)
    fluxes = [t for t in targets if t in TOWER_FLUXES and t in d.data]
    if not fluxes:
        return np.zeros(0, int)
    seen = np.zeros(d.n_columns, bool)
    for t in fluxes:
        seen |= np.isfinite(d.data[t].values).any(axis=0)
    return np.flatnonzero(seen)


def load_domains(cfg: RunConfig) -> list[Domain]:
    """Every configured site as a one-column Domain with gap-free forcing (filled values flagged),
    or the configured grid as one Domain of its cells."""
    if cfg.data.grid is not None:
        return [read_grid_spec(cfg.data.grid)]
    out = [domain_from_site(prepare_forcing(read_site_spec(spec), out_of_range=cfg.data.forcing_out_of_range))
           for spec in cfg.data.sites]
    ids = [d.column_ids[0] for d in out]
    dup = sorted({s for s in ids if ids.count(s) > 1})
    if dup:
        raise DataError(f"site(s) {dup} appear more than once in data.sites; give each site once")
    check_site_folders(ids)
    return out


def check_site_folders(ids: list[str]) -> None:
    """DataError when two site ids map to the same folder name (``site_file_name``)."""
    folders = [site_file_name(s) for s in ids]
    clash = sorted({s for s, f in zip(ids, folders) if folders.count(f) > 1})
    if clash:
        raise DataError(f"site ids {clash} map to the same folder name under predictions/ "
                        f"({sorted({site_file_name(s) for s in clash})}); give the sites distinct ids")  # fmt: skip


def _site_id(d: Domain) -> str:
    """A site's id, a grid's name."""
    return d.name if d.kind == "grid" else d.column_ids[0]


def _time_labels(d: Domain, cfg: RunConfig) -> np.ndarray:
    split = cfg.data.split
    spin = int(round(cfg.data.spinup_days * 86400.0 / d.time_step_s))
    ds = d.column(0)
    if split.mode == "fractions":
        return np.asarray(split_by_time(ds, (split.train, split.val, split.test), spinup_steps=spin).values)
    if split.mode == "blocked":
        b = split.blocked
        return np.asarray(blocked_labels(ds, d.time_step_s, block_days=b.block, test_every=b.test_every,
                                         val_every=b.val_every, offset=b.offset, gap_days=b.gap,
                                         spinup_steps=spin).values)  # fmt: skip
    t = d.time
    labels = np.zeros(t.size, np.int8)
    for value, (start, end) in ((TRAIN, split.train), (VALIDATION, split.val), (TEST, split.test)):
        sel = (t >= np.datetime64(start)) & (t < np.datetime64(end) + np.timedelta64(1, "D"))
        labels[sel] = value
    labels[:spin] = UNUSED
    return labels


def check_date_split(cfg: RunConfig, sites: list[Domain], labels: dict[str, np.ndarray]) -> None:
    """A DataError when a role's dates hold no step of any site (naming the records), a warning
    naming the sites that have no step of a role (they take no part in it)."""
    split = cfg.data.split
    for role, value, (start, end) in (("train", TRAIN, split.train), ("val", VALIDATION, split.val),
                                      ("test", TEST, split.test)):  # fmt: skip
        without = [_site_id(d) for d in sites if not (labels[_site_id(d)] == value).any()]
        if len(without) == len(sites):
            records = ", ".join(f"{_site_id(d)} {str(d.time[0])[:10]} .. {str(d.time[-1])[:10]}" for d in sites)
            raise DataError(f"data.split.{role} ({start} .. {end}) holds no step of any site's record ({records})")
        if without:
            warnings.warn(f"data.split.{role} ({start} .. {end}) holds no step of {', '.join(without)}: "
                          f"{'they take' if len(without) > 1 else 'it takes'} no part in it", DataWarning, stacklevel=2)


def _masked(d: Domain, labels: np.ndarray, value: int) -> Domain:
    return d.with_loss_mask(labels == value)


def _held_out(sites: list[Domain], test: list[Domain], val: float) -> tuple[list[Domain], list[Domain]]:
    """Training and validation Domains of the sites not in ``test`` (the last ``val`` of each)."""
    train_d, val_d = [], []
    for d in sites:
        if any(d is t for t in test):
            continue
        lab = np.asarray(split_by_time(d.column(0), (1.0 - val, val, 0.0)).values)
        train_d.append(_masked(d, lab, TRAIN))
        val_d.append(_masked(d, lab, VALIDATION))
    return train_d, val_d


def experiments(cfg: RunConfig, sites: list[Domain]) -> list[Experiment]:
    """The experiments of ``cfg``'s split over the site Domains (module docstring)."""
    split = cfg.data.split
    mode = split.mode
    if mode in ("fractions", "dates", "blocked"):
        labels = {_site_id(d): _time_labels(d, cfg) for d in sites}
        if mode == "dates":
            check_date_split(cfg, sites, labels)
        return [Experiment("all", [_masked(d, labels[_site_id(d)], TRAIN) for d in sites],
                           [_masked(d, labels[_site_id(d)], VALIDATION) for d in sites], sites,
                           "blocked" if mode == "blocked" else "test", labels)]  # fmt: skip
    if mode == "test_sites":
        labels = {k: np.asarray(v.values) for k, v in held_out_labels([d.column(0) for d in sites],
                                                                       split.test_sites, split.val).items()}  # fmt: skip
        test = [d for d in sites if _site_id(d) in split.test_sites]
        train_d, val_d = _held_out(sites, test, split.val)
        return [Experiment("test_sites", train_d, val_d, test, "test_sites",
                           {_site_id(d): labels[_site_id(d)] for d in test}, shared_parameters=True)]  # fmt: skip
    if len(sites) < 2:
        raise ValueError("leave_one_site_out needs at least 2 sites")
    exps = []
    for test in sites:
        train_d, val_d = _held_out(sites, [test], split.val)
        sid = _site_id(test)
        exps.append(Experiment(f"loso-{sid}", train_d, val_d, [test], "loso",
                               {sid: np.full(test.n_steps, TEST, np.int8)}, shared_parameters=True))  # fmt: skip
    return exps


def model_entries(cfg: RunConfig) -> list[tuple[str, ModelSpec, BaseModel]]:
    """(label, spec, options) of each model entry of ``cfg``, for the checks before a run."""
    return [(m.label or m.name, spec, spec.Options.model_validate(m.options))
            for m in cfg.models for spec in (get_model(m.name),)]  # fmt: skip


def check_observations(cfg: RunConfig, exps: list[Experiment]) -> None:
    """DataError, before anything is trained, when an experiment's training or validation sets hold
    no usable observation of a target (every model would learn or validate on nothing); nothing to
    check when no model learns from observations."""
    if not any(spec.needs_observations(options) for _, spec, options in model_entries(cfg)):
        return
    for exp in exps:
        for part, domains in (("training", exp.train), ("validation", exp.val)):
            counts = sum((usable_targets(ds, cfg.data.targets, cfg.data.max_qc)[1].sum(axis=0)
                          for d in domains for ds in d.columns()), start=np.zeros(len(cfg.data.targets), int))
            for target, n in zip(cfg.data.targets, counts):
                if n == 0:
                    raise DataError(
                        f"experiment {exp.name}: the {part} steps of {', '.join(_site_id(d) for d in domains)} hold no "
                        f"usable {target} observation (finite, QC <= data.max_qc = {cfg.data.max_qc}); check "
                        f"data.split, data.max_qc and whether the files observe {target}")


def check_inputs(cfg: RunConfig, exps: list[Experiment]) -> None:
    """DataError, before anything is written, when a model cannot run on a domain of the run: not
    of its kind (``ModelSpec.domain_kinds``: a regional model on sites), or lacking a variable it
    needs (``ModelSpec.required_inputs``: e.g. an LSTM's ``inputs``)."""
    for label, spec, options in model_entries(cfg):
        kinds = spec.domain_kinds(options)
        for exp in exps:
            for d in (*exp.train, *exp.val, *exp.test):
                if d.kind not in kinds:
                    raise DataError(f"models: {label} ({spec.name}) runs on {' or '.join(kinds) or 'no'} "
                                    f"domains, and {_site_id(d)} is in a {d.kind} domain (the regional models take one "
                                    "grid: data.grid)")  # fmt: skip
                try:
                    spec.check_required_inputs(options, d, label)
                except DataError as err:
                    raise DataError(f"models: {err}; leave the model out or give it inputs the data has") from None


def check_time_steps(cfg: RunConfig, exps: list[Experiment]) -> None:
    """DataError, before anything is trained, when a model with memory (``learns_time_step``) would
    be tested at a time step none of its training sites has (an hourly test site of half-hourly
    training sites): its prediction would be refused after the training."""
    memory = [label for label, spec, options in model_entries(cfg) if spec.learns_time_step(options)]
    if not memory:
        return
    for exp in exps:
        steps = training_time_steps(exp.train)
        for d in exp.test:
            if not time_step_among(d.time_step_s, steps):
                raise DataError(f"experiment {exp.name}: {_site_id(d)} has {d.time_step_s:g} s time steps, its training "
                                f"sites {' or '.join(f'{s:g}' for s in steps)} s; {', '.join(memory)} learn their memory at "
                                "the training step and cannot predict at another: resample the sites to one step, or "
                                "leave these models out")


def print_repairs(cfg: RunConfig, sites: list[Domain]) -> None:
    """Per site, what was repaired, filled, estimated or is missing (also in obs.nc and the report)."""
    for d in sites:
        lines = repair_summary(d.column(0), cfg.data.targets)
        if lines:
            console.print(f"[bold]{_site_id(d)}[/bold]: data repairs and gaps\n  " + "\n  ".join(lines),
                          soft_wrap=True, highlight=False)


# ------------------------------------------------------------------------------ outputs


def write_obs(site: xr.Dataset, labels: np.ndarray, split_kind: str, path: Path, targets=DEFAULT_TARGETS,
              max_qc: int = 1) -> None:
    """The observations a run scores, with their QC flags, the forcing flags (``<var>_filled``,
    ``forcing_filled``: scoring skips steps driven by filled forcing) and the site's repairs."""
    keep = [v for v in OBS_VARIABLES if v in site]
    keep += [f"{v}_qc" for v in keep if f"{v}_qc" in site]
    keep += [f"{v}_filled" for v in keep if f"{v}_filled" in site]
    keep += [v for v in ("forcing_filled", "LWdown_estimated") if v in site]
    obs = site[keep].copy()
    obs["split"] = ("time", np.asarray(labels, np.int8), SPLIT_ATTRS)
    obs.attrs = {k: v for k, v in site.attrs.items() if isinstance(v, (str, int, float))}
    obs.attrs["split_kind"] = split_kind
    obs.attrs["targets"] = " ".join(targets)
    obs.attrs["max_qc"] = int(max_qc)
    obs.attrs["repairs_summary"] = "\n".join(repair_summary(site, targets))
    write_netcdf(obs, path)


def model_dir(run_dir: Path, label: str, experiment: str) -> Path:
    """Where a run keeps the trained model ``label`` of ``experiment``."""
    return Path(run_dir) / "models" / label / experiment


# ------------------------------------------------------------------------------------ run


#: The parts of a config that define a run; resuming with any of them changed is refused.
RUN_DEFINING = ("data", "models", "training")


def _flat(tree, prefix: str = "") -> dict[str, object]:
    """``{"models[1].options.epochs": 3, ...}``: every leaf of a config dump by its key path."""
    if isinstance(tree, dict):
        out: dict[str, object] = {}
        for k, v in tree.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(tree, list) and tree and any(isinstance(v, (dict, list)) for v in tree):
        out = {f"{prefix}.length": len(tree)}
        for i, v in enumerate(tree):
            out.update(_flat(v, f"{prefix}[{i}]"))
        return out
    return {prefix: tree}


def _without_unused_options(cfg: RunConfig) -> RunConfig:
    """``cfg`` without the options each model (and each ensemble member) does not use
    (``ModelSpec.used_options``)."""
    models = [m.model_copy(update={"options": get_model(m.name).used_options(m.options)}) for m in cfg.models]
    return cfg.model_copy(update={"models": models})


def check_resumable(cfg: RunConfig, run_dir: Path) -> None:
    """ConfigError naming the keys where ``cfg`` differs from the run's stored ``config.yaml`` in
    the parts that define the run (data, models, training); ``output`` may differ."""
    stored_path = Path(run_dir) / "config.yaml"
    if not stored_path.is_file():
        raise ConfigError(f"--resume: {run_dir} has no config.yaml, so nothing says it is this config's run; start "
                          "it again with --overwrite")
    try:
        stored = load_run_config(stored_path, check_paths=False, stored=True)
    except ConfigError as err:
        raise ConfigError(f"--resume: the run's stored {stored_path} cannot be read: {err}") from None
    # training.devices may differ: the results do not depend on it (training/sharding.py); so may the
    # options a model does not use (a run written before they were refused may hold some)
    old, new = (_flat(_without_unused_options(c).model_dump(mode="json", include=set(RUN_DEFINING),
                                                            exclude={"training": {"devices"}}))
                for c in (stored, cfg))
    differ = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if differ:
        shown = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in differ[:8])
        more = f" (and {len(differ) - 8} more)" if len(differ) > 8 else ""
        raise ConfigError(f"--resume: the config differs from the one {run_dir} was run with, at {shown}{more}; "
                          "resume with the same config, or start a new run (another name, or --overwrite)")


INPUTS_FILE = "inputs.json"


def input_digests(cfg: RunConfig) -> dict[str, str]:
    """``{path: SHA-256}`` of every data file the config names (site files, PLUMBER2 pairs, the
    grid), which a run records (``inputs.json``) so that ``--resume`` refuses a file changed since."""
    paths = [p for spec in cfg.data.sites or () for p in
             ((spec.path,) if spec.plumber is None else (spec.plumber.met, spec.plumber.flux))]
    if cfg.data.grid is not None:
        paths.append(cfg.data.grid.path)
    return {str(p): sha256_of(Path(p)) for p in paths if p is not None and Path(p).is_file()}


def check_inputs_unchanged(digests: dict[str, str], run_dir: Path) -> None:
    """ConfigError naming the data files whose content differs from what the run at ``run_dir``
    recorded when it started (a run from before the record is not checked)."""
    path = Path(run_dir) / INPUTS_FILE
    if not path.is_file():
        return
    stored = read_json_object(path)
    changed = sorted(f for f, d in stored.items() if digests.get(f, d) != d)
    if changed:
        raise ConfigError(f"--resume: data file(s) {', '.join(changed)} changed since {run_dir} started (SHA-256 "
                          f"recorded in its {INPUTS_FILE}); the models it trained would be scored against other "
                          "data: start the run again (--overwrite) or restore the files")


RUN_ARTEFACTS = (INPUTS_FILE, "models", "checkpoints", "report.html")  # one of them is in every run


def not_a_run(folder: Path) -> str | None:
    """Why ``folder`` is not a run directory written by ``hybridlsm run`` (None when it is one): a
    run has a ``config.yaml`` and one of ``RUN_ARTEFACTS``. A folder of the user's that merely holds
    a config.yaml is not one, and is never resumed into or replaced; a run whose config.yaml is
    damaged, or was written by an older version with values now refused, still is one (its config
    is then compared, and refused, by ``check_resumable``)."""
    if not (folder / "config.yaml").is_file():
        return "no config.yaml"
    if not any((folder / name).exists() for name in RUN_ARTEFACTS):
        return f"a config.yaml but none of a run's {', '.join(RUN_ARTEFACTS)}"
    return None


def prepare_run_dir(cfg: RunConfig, resume: bool) -> tuple[Path, Path]:
    """(the folder this run writes to, the run directory it becomes).

    A run directory appears only when its run has finished (``finish_run_dir``), so a failed or
    interrupted run is never mistaken for a finished one:

    - a new run writes to ``.<name>.partial``; ``resume`` continues an unfinished one there (after
      checking the config), ``overwrite`` starts it again;
    - with ``overwrite``, an existing run is replaced only when the new one has finished: until then
      the new run writes to ``.<name>.overwrite`` and the old run stays as it was; ``resume`` with
      ``overwrite`` continues such an overwrite that stopped;
    - ``resume`` of a finished run continues it in place after checking the config.

    A run stopped between ``finish_run_dir``'s two renames left the old run as ``.<name>.replaced``
    and nothing (or an empty folder) in its place: it is put back first (``restore_replaced``), and the new run, finished
    in ``.<name>.overwrite``, is swapped in by ``--resume --overwrite``.

    The data files' digests (``input_digests``) are checked on resume and recorded (``inputs.json``)."""
    inputs = input_digests(cfg)
    run_dir = cfg.run_path
    if (replaced := unfinished_dir(run_dir, REPLACED)).is_dir() and not (run_dir.exists() and any(run_dir.iterdir())):
        if run_dir.is_dir():  # an empty folder in its place (the user's): the run it held goes back
            run_dir.rmdir()
        restore_replaced(run_dir)
        console.print(f"[yellow]{run_dir} was put back from {replaced.name}, where a run that replaced it stopped "
                      "before its last rename[/yellow]", soft_wrap=True)
    partial = unfinished_dir(run_dir)
    if run_dir.exists() and any(run_dir.iterdir()):
        if why := not_a_run(run_dir):  # the user's folder: never written into or replaced
            raise FileExistsError(
                f"{run_dir} exists and is not a hybridlsm run directory ({why}): neither --resume nor "
                "--overwrite writes into or replaces it; give the run another name or output.run_dir")
        unfinished = unfinished_dir(run_dir, OVERWRITE)
        if resume and cfg.output.overwrite and unfinished.exists():  # an overwrite that stopped: continue it
            check_resumable(cfg, unfinished)
            check_inputs_unchanged(inputs, unfinished)
            work = unfinished
        elif resume:
            check_resumable(cfg, run_dir)
            check_inputs_unchanged(inputs, run_dir)
            work = run_dir
            if unfinished.exists():
                console.print(f"[yellow]an unfinished --overwrite of this run is in {unfinished}; this resumes the "
                              "finished run (--resume --overwrite continues the overwrite)[/yellow]", soft_wrap=True)
        elif not cfg.output.overwrite:
            raise FileExistsError(
                f"run directory {run_dir} exists; pass --resume to continue it, or set output.overwrite: true "
                "(or --overwrite) to replace it"
            )
        else:
            work = unfinished
            if work.exists():  # an earlier overwrite that did not finish: ours, not the user's
                shutil.rmtree(work)
    elif partial.exists():
        if resume:
            check_resumable(cfg, partial)
            check_inputs_unchanged(inputs, partial)
        elif cfg.output.overwrite:
            shutil.rmtree(partial)
        else:
            raise FileExistsError(
                f"an unfinished run {cfg.name} is in {partial} (it stopped before its report was written); pass "
                "--resume to continue it, or --overwrite to start it again")
        work = partial
    else:
        work = partial
    work.mkdir(parents=True, exist_ok=True)
    write_config(cfg, work / "config.yaml")
    atomic_write(work / INPUTS_FILE, lambda p: p.write_text(json.dumps(inputs, indent=1, sort_keys=True)))
    return work, run_dir


#: ``train_all(cfg, experiments, config_name, resume, run_dir) -> timings``: trains every model of
#: every experiment into ``run_dir`` (``train_sequentially``; ``hybridlsm sweep`` gives a Dask one);
#: ``run_dir`` None: train without writing anything (a process other than 0 of a jax.distributed run)
TrainAll = Callable[[RunConfig, list[Experiment], str, bool, Path | None], dict]


class ProcessZeroFailed(RuntimeError):
    """Process 0 of a ``jax.distributed`` run failed while writing the run directory; its own
    output says why."""


@contextmanager
def process_zero_writes(what: str) -> Iterator[bool]:
    """A block whose writes only process 0 does (it gets True, the others False and skip them),
    after which every process learns whether process 0 succeeded: a collective
    (``broadcast_one_to_all``), so every process enters the block at the same point of the run.
    Process 0 raises its own error; the others raise ProcessZeroFailed naming ``what``."""
    if jax.process_count() == 1:
        yield True
        return
    from jax.experimental.multihost_utils import broadcast_one_to_all

    try:
        yield jax.process_index() == 0
    except BaseException:
        broadcast_one_to_all(np.int32(0))
        raise
    if not int(broadcast_one_to_all(np.int32(1))):
        raise ProcessZeroFailed(f"process 0 of the jax.distributed run failed while {what} (its output says why); "
                                f"process {jax.process_index()} stops too")  # fmt: skip


def check_processes(cfg: RunConfig, resume: bool) -> None:
    """ConfigError for what several processes (jax.distributed) cannot do: split the batch over fewer
    than all the job's devices (a process without a device in the mesh), or resume (what is finished
    is known to process 0 only)."""
    if jax.process_count() == 1:
        return
    n = len(jax.devices())
    if cfg.training.devices not in (None, n):
        raise ConfigError(f"training.devices = {cfg.training.devices}, but the {jax.process_count()} processes of "
                          f"this jax.distributed run have {n} devices, and every process trains on its own: set "
                          f"training.devices: null (all of them) or {n}")  # fmt: skip
    if resume:
        raise ConfigError("--resume is not supported with several processes (only process 0 knows what is "
                          "finished); resume the run with one process, or start it again with --overwrite")


def run(cfg: RunConfig, config_name: str = "<config>", resume: bool = False, *,
        train_all: TrainAll | None = None) -> Path:
    """Train, save, predict and report; returns the run directory. ``train_all`` runs the training
    (default ``train_sequentially``, in this process). Under ``jax.distributed`` every process
    calls ``run`` with the same config, and only process 0 writes (module docstring)."""
    sites = load_domains(cfg)  # read and check every input before the run directory is touched
    exps = experiments(cfg, sites)
    check_observations(cfg, exps)
    check_inputs(cfg, exps)
    check_time_steps(cfg, exps)
    cell_mesh(cfg.training.devices)  # ConfigError now, not after the first models have trained
    check_processes(cfg, resume)
    for parent in (cfg.run_path, *cfg.run_path.parents):
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"output.run_dir: {parent} is a file, not a folder; give a folder for the runs")
    writer = jax.process_index() == 0
    work, final, timings = None, cfg.run_path, {}
    with run_lock(cfg.run_path) if writer else nullcontext():  # a second run on the run directory is refused
        with process_zero_writes("preparing the run directory") as writes:
            if writes:
                work, final = prepare_run_dir(cfg, resume)
                print_repairs(cfg, sites)
                if work != final:
                    console.print(f"writing to [bold]{work}[/bold]; it becomes {final} when the run has finished")
                timings = read_timings(work, resume)
                for exp in exps:  # once, here: the tasks of a sweep then never write the same file
                    write_test_observations(cfg, exp, work)
        timings.update((train_all or train_sequentially)(cfg, exps, config_name, resume, work))
        with process_zero_writes("writing the report") as writes:
            if writes:
                finish_run(cfg, config_name, timings, work, final)
        return final


def train_sequentially(cfg: RunConfig, exps: list[Experiment], config_name: str, resume: bool,
                       run_dir: Path | None) -> dict:
    """Every experiment in turn in this process, sharing one cache (``train_experiment``)."""
    cache: dict = {}  # this run's shared results (the calibrated physics the hybrids start from)
    timings: dict = {}
    for exp in exps:
        timings.update(train_experiment(cfg, exp, config_name, resume, run_dir, cache))
    return timings


TIMING_FILE = "timing.json"


def read_timings(run_dir: Path, resume: bool) -> dict:
    """The training times recorded so far (a resumed run keeps its earlier ones: those of a finished
    run's ``timings.json`` and those each model wrote beside it as it finished, ``timing.json``)."""
    if not resume:
        return {}
    timings = {}
    for path in (run_dir / "timings.json", *sorted(Path(run_dir).glob(f"models/*/*/{TIMING_FILE}"))):
        if not path.exists():
            continue
        try:  # only the training times: a damaged file loses them, with a warning, not the run
            value = read_json_object(path)
        except DamagedRunFile as err:
            console.print(f"[yellow]{err}; its training times are not kept[/yellow]", soft_wrap=True)
            continue
        if path.name == TIMING_FILE:
            timings.setdefault(f"{path.parent.name}/{path.parent.parent.name}", value)
        else:
            timings.update(value)
    return timings


def finish_run(cfg: RunConfig, config_name: str, timings: dict, work: Path, final: Path) -> Path:
    """Write the timings and the report, then move the finished run into place (a run whose report
    fails stays unfinished, to be resumed)."""
    from .evaluation.report import build_report

    atomic_write(work / "timings.json", lambda p: p.write_text(json.dumps(timings, indent=1, sort_keys=True)))
    build_report(work, config_name=config_name, shown_as=final)
    finish_run_dir(work, final)
    console.print(f"report: [green]{final / 'report.html'}[/green]")
    return final


def write_test_observations(cfg: RunConfig, exp: Experiment, run_dir: Path) -> None:
    """The observations of an experiment's test sites, ``predictions/<site>/obs.nc``; of a grid,
    ``maps/<grid>/obs.nc`` and each tower cell's as a site's."""
    for d in exp.test:
        sid = _site_id(d)
        if d.kind == "grid":
            write_grid_obs(d, exp.labels[sid], exp.split_kind, run_dir / "maps" / site_file_name(sid) / "obs.nc",
                           cfg.data.targets, cfg.data.max_qc)
            towers = d.select_columns(tower_columns(d, cfg.data.targets))
            for j, tid in enumerate(towers.column_ids):
                write_obs(towers.column(j), exp.labels[sid], exp.split_kind,
                          run_dir / "predictions" / site_file_name(tid) / "obs.nc", cfg.data.targets, cfg.data.max_qc)
            continue
        write_obs(d.column(0), exp.labels[sid], exp.split_kind, run_dir / "predictions" / site_file_name(sid) / "obs.nc",
                  cfg.data.targets, cfg.data.max_qc)  # fmt: skip


def write_grid_obs(d: Domain, labels: np.ndarray, split_kind: str, path: Path, targets=DEFAULT_TARGETS,
                   max_qc: int = 1) -> None:
    """A grid's observed targets with their QC flags and ``forcing_filled`` where the grid has them
    (``maps.grid_skill`` scores only the usable values, as a site's), and a twin's ``*_true`` fields,
    on (time, y, x) with the split."""
    keep = [v for v in d.data.data_vars if v in targets or (str(v).endswith("_true") and d.data[v].dims == ("time", "column"))
            or (v in (*(f"{t}_qc" for t in targets), "forcing_filled") and d.data[v].dims == ("time", "column"))]
    grid = d.grid_dataset()
    obs = grid[keep + ["igbp"]].copy()
    obs["split"] = ("time", np.asarray(labels, np.int8), SPLIT_ATTRS)
    obs.attrs = {k: v for k, v in grid.attrs.items() if isinstance(v, (str, int, float))}
    obs.attrs.update(split_kind=split_kind, targets=" ".join(targets), grid=d.name, max_qc=int(max_qc))
    write_netcdf(obs, path)


def prediction_paths(run_dir: Path, d: Domain, label: str, targets: Sequence[str]) -> list[Path]:
    """The files a model's prediction of ``d`` writes: a site's, or a grid's map and its towers'."""
    if d.kind != "grid":
        return [run_dir / "predictions" / site_file_name(_site_id(d)) / f"{label}.nc"]
    towers = d.select_columns(tower_columns(d, targets)).column_ids
    return [run_dir / "maps" / site_file_name(d.name) / f"{label}.nc",
            *(run_dir / "predictions" / site_file_name(t) / f"{label}.nc" for t in towers)]


def write_predictions(run_dir: Path, d: Domain, outputs: dict, label: str, attrs: dict, targets: Sequence[str]) -> None:
    """A site's outputs, or a grid's map and its tower cells' outputs as sites."""
    if d.kind != "grid":
        write_site_outputs(d, outputs, run_dir / "predictions", f"{label}.nc", attrs)
        return
    write_grid_outputs(d, outputs, run_dir / "maps" / site_file_name(d.name) / f"{label}.nc", attrs)
    towers = tower_columns(d, targets)
    if towers.size:
        write_site_outputs(d.select_columns(towers), {k: np.asarray(v)[:, towers] for k, v in outputs.items()},
                           run_dir / "predictions", f"{label}.nc", attrs)


def train_experiment(cfg: RunConfig, exp: Experiment, config_name: str, resume: bool, run_dir: Path | None,
                     cache: dict | None = None, labels: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Train, save and predict every model (or the models ``labels``) of one experiment in
    ``run_dir`` (each model's folder, checkpoints and predictions; ``run`` has written the test
    sites' observations); returns ``{"<experiment>/<label>": timings}``. ``run_dir`` None: train
    only, writing nothing (a process other than 0 of a jax.distributed run: its part of each
    training step is all process 0 needs from it).
    Experiments share nothing but ``cache`` (results that several models may reuse: the calibrated
    physics, spun-up states, and every trained model under ``registry.trained_key``, which a
    multi-model ensemble takes its members from), so ``hybridlsm sweep`` runs them as independent
    tasks."""
    cache = {} if cache is None else cache
    timings: dict[str, dict[str, float]] = {}
    for entry in cfg.models:
        label = entry.label or entry.name
        if labels is not None and label not in labels:
            continue
        spec = get_model(entry.name)
        options = spec.Options.model_validate(entry.options)
        ctx = TrainingContext.from_config(cfg, shared_parameters=exp.shared_parameters, cache=cache,
                                          checkpoint_dir=None if run_dir is None else
                                          run_dir / "checkpoints" / label / exp.name)  # fmt: skip
        key = trained_key(entry.name, options, exp.train, exp.val, ctx)  # offered to the models after it
        if run_dir is None:
            cache[key] = spec.train(spec.build(options), options, exp.train, exp.val, ctx)
            continue
        targets = [p for d in exp.test for p in prediction_paths(run_dir, d, label, cfg.data.targets)]
        damage = {p: problem(p) for p in targets} if resume else {}
        for p, why in damage.items():
            if why and p.exists():
                console.print(f"[yellow]{exp.name}/{label}: {p} {why}; recomputing[/yellow]", soft_wrap=True)
        if resume and not any(damage.values()):  # every prediction exists and verifies
            saved = model_dir(run_dir, label, exp.name)
            try:  # a missing model.json is damage too: the predictions alone cannot be applied elsewhere
                cache[key] = spec.load(options, saved)
                spec.reuse(cache[key], options, exp.train, exp.val, ctx)
                console.print(f"[dim]{exp.name}/{label}: predictions exist, skipped (resume)[/dim]")
                continue
            except SavedModelError as err:
                console.print(f"[yellow]{exp.name}/{label}: {err}; recomputing[/yellow]", soft_wrap=True)
        console.print(f"[bold]{exp.name}[/bold]: training [cyan]{label}[/cyan] on "
                      f"{', '.join(_site_id(d) for d in exp.train)}")  # fmt: skip
        t0 = time.perf_counter()
        try:
            model = spec.train(spec.build(options), options, exp.train, exp.val, ctx)
        except TrainingError as err:
            raise TrainingError(f"{exp.name}/{label}: {err}; what finished is kept in {run_dir} "
                                "(--resume continues it, --overwrite starts again)") from None
        t_train = time.perf_counter() - t0
        cache[key] = model
        model = on_this_process(model)  # saved and predicted here alone (under jax.distributed: process 0)
        spec.save(model, options, model_dir(run_dir, label, exp.name))
        for d in exp.test:
            prov = spec.provenance(model, d)
            write_predictions(run_dir, d, spec.predict(model, d), label,
                              {"model": label, "config": config_name, "experiment": exp.name,
                               "parameters_from": prov[0]}, cfg.data.targets)  # fmt: skip
        summary = spec.training_summary(model)
        timings[f"{exp.name}/{label}"] = {"train_s": round(t_train, 2),
                                          "total_s": round(time.perf_counter() - t0, 2), **summary}  # fmt: skip
        # kept beside the model at once: a run interrupted later still knows it (read_timings)
        atomic_write(model_dir(run_dir, label, exp.name) / TIMING_FILE,
                     lambda p: p.write_text(json.dumps(timings[f"{exp.name}/{label}"], indent=1)))
        console.print(f"  {label}: trained in {t_train:.1f} s" + "".join(f"; {k}: {v}" for k, v in summary.items()))
    return timings


def run_config_file(path: str | Path, resume: bool = False, overwrite: bool = False) -> Path:
    cfg = load_run_config(path)
    if overwrite:
        cfg = cfg.model_copy(update={"output": cfg.output.model_copy(update={"overwrite": True})})
    return run(cfg, config_name=str(path), resume=resume)
