"""``hybridlsm predict``: apply a trained model of a run to new sites, periods or a grid.

The model saved by ``hybridlsm run`` under ``RUN_DIR/models/<label>/<experiment>/`` is loaded (no
retraining) and run on Domains built from the given files:

- a site file (any reader's format) becomes a one-column Domain; its outputs are written as
  ``OUT/predictions/<site>/<label>.nc``; where a file has observed Qh and Qle they go beside it
  as ``obs.nc`` (every step labelled test), and when every site has them, ``OUT`` gets the skill
  table and HTML report of ``hybridlsm report``;
- a gridded file becomes the Domain of its cells with forcing (a cell without any is not modelled;
  one with a gap is refused, naming it; its land-cover field, if any, gives each cell's IGBP class); outputs go to ``OUT/<grid>_<label>.nc`` on ``(time, y, x)``;
- a zarr store (a grid in the canonical form on ``(time, y, x)``, e.g. one too large for memory) is
  read lazily and the model streamed through it in row bands and time chunks
  (``ModelSpec.stream``, ``models.streaming``): outputs go to ``OUT/<grid>_<label>.zarr`` as they
  are produced.

With ``--start``/``--end`` the model still runs from the file's start (its spin-up cycles the
file's first days, and the record before ``--start`` sets the states, the LSTMs' memory and the
empirical models' antecedent rain, as in training) up to ``--end``; only the period's outputs are
written and scored; a zarr store is streamed from its start too and only the period is written.

``OUT`` defaults to ``RUN_DIR/applied/<label>``, so nothing is written outside the run directory
unless asked; inside a run directory (this one or another) it must lie under its ``applied/``,
where the run's report, validate and discover never look (``check_output_folder``). Which
parameters each column used (a trained site's own, or what transfers to a new site) is in
``OUT/provenance.json`` and in each site file's ``parameters_from`` attribute. provenance.json is
rewritten after each output: ``complete`` is false, ``not_written`` lists what is missing and
``failed`` says why while a prediction runs or after it failed part-way. It also records the
inputs (files with their SHA-256, the period, the run's targets and ``max_qc`` the observations are
scored with): another model of the same inputs joins an earlier prediction's folder (``models``
lists them; the report compares them on the same observations), other inputs are refused there. A
prediction holds the lock of the run ``OUT`` lies in, or, outside every run, the lock of ``OUT``
(a file beside it, removed after), so that two never write one folder.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .config import DEFAULT_TARGETS, ConfigError
from .data import DataError, detect_format, prepare_forcing, read_site
from .data.gridprep import check_regular_time
from .data.splits import TEST
from .domain import Domain, domain_from_site, site_file_name, write_grid_outputs, write_site_outputs
from .models.registry import SavedModelError, StreamingUnsupported, load_run_config, load_saved_model
from .pipeline import GRID_FORMATS, check_site_folders, not_a_run, read_grid_file, write_obs
from .rundir import DamagedRunFile, RunLockedError, atomic_write, read_json_object, run_lock, sha256_of

__all__ = ["PredictError", "domain_from_file", "predict", "saved_model_dir"]


class PredictError(ValueError):
    """Bad input to ``predict``: the message names the run, model, file, variable or period."""


#: the file of a prediction folder that says what it holds (``predict``'s docstring)
PROVENANCE = "provenance.json"


def saved_model_dir(run_dir: Path, label: str, experiment: str | None = None) -> Path:
    """The folder of a run's trained model ``label`` (the only experiment, or ``experiment``)."""
    root = Path(run_dir) / "models"
    if not root.is_dir():
        raise PredictError(f"{run_dir}: not a run directory with trained models (no models/ folder)")
    labels = sorted(p.name for p in root.iterdir() if p.is_dir())
    if label not in labels:
        raise PredictError(f"{run_dir}: no trained model {label!r}; the run has: {', '.join(labels) or 'none'}")
    exps = sorted(p.name for p in (root / label).iterdir() if (p / "model.json").is_file())
    if not exps:
        raise PredictError(f"{root / label}: no saved model (no <experiment>/model.json; a run stopped while saving "
                           "it?); rerun the training with `hybridlsm run CONFIG --resume`")
    if experiment is not None:
        if experiment not in exps:
            raise PredictError(f"{run_dir}: model {label!r} has no experiment {experiment!r}; it has: {', '.join(exps)}")
        return root / label / experiment
    if len(exps) != 1:
        raise PredictError(f"{run_dir}: model {label!r} was trained in {len(exps)} experiments ({', '.join(exps)}); "
                           "choose one with --experiment")  # fmt: skip
    return root / label / exps[0]


def is_zarr_store(path: Path) -> bool:
    """A zarr store (format 2 or 3): a folder with zarr metadata."""
    path = Path(path)
    return path.is_dir() and any((path / m).is_file() for m in (".zgroup", ".zmetadata", "zarr.json"))


def domain_from_file(path: Path, out_of_range: str = "error") -> Domain:
    """A site file as a one-column Domain (forcing gap-filled, repairs flagged) or a gridded file
    as the Domain of its cells."""
    path = Path(path)
    if detect_format(path) not in GRID_FORMATS:
        return domain_from_site(prepare_forcing(read_site(path), out_of_range=out_of_range))
    return read_grid_file(path)  # the grid's own land_cover, where it has one


class RunData(NamedTuple):
    """What of the run's ``data`` config a prediction follows: new files are checked
    (``forcing_out_of_range``) and scored (``targets``, ``max_qc``) as the run's were."""

    forcing_out_of_range: str = "error"
    targets: tuple[str, ...] = tuple(DEFAULT_TARGETS)
    max_qc: int | None = 1


def _run_data(run_dir: Path) -> RunData:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return RunData()
    try:
        data = load_run_config(path, check_paths=False, stored=True).data
    except ConfigError as err:
        raise PredictError(f"{run_dir}: its config.yaml cannot be read: {err}") from None
    return RunData(data.forcing_out_of_range, tuple(data.targets), data.max_qc)


def check_output_folder(out: Path) -> Path:
    """Refuse ``--out`` where a prediction would damage something: a file; a folder of the user's
    (non-empty, not an earlier prediction's: no provenance.json); inside an earlier prediction's
    folder, or inside a run directory anywhere but under its ``applied/`` (the innermost run's; its
    ``predictions/`` or ``models/`` would gain files that its report, validate and discover read as
    its own). Returns the folder whose lock the prediction holds: that run directory, else ``out``
    itself (resolved: a link to a folder is locked as the folder)."""
    if out.exists() and not out.is_dir():
        raise PredictError(f"--out {out} is a file; give a folder")
    resolved = out.resolve()
    inside = next((f for f in resolved.parents if (f / PROVENANCE).is_file()), None)
    if inside is not None:
        raise PredictError(f"--out {out} is inside the prediction folder {inside}: its report would read the files as "
                           "its own; give a folder outside it")
    run = next((f for f in (resolved, *resolved.parents) if not_a_run(f) is None), None)  # the innermost run
    if run is not None and (not resolved.is_relative_to(run / "applied") or resolved == run / "applied"):
        raise PredictError(f"--out {out} is inside the run directory {run}: its files there would be read as the "
                           f"run's own; give a folder under {run / 'applied'} or outside the run")
    if out.is_dir() and any(out.iterdir()) and not (out / PROVENANCE).is_file():
        # not an earlier prediction's folder: its report.html, metrics.csv ... are the user's
        raise PredictError(f"--out {out} holds files and is not the folder of an earlier prediction (no "
                           f"{PROVENANCE}): its files would be replaced; give an empty or new folder")
    return resolved if run is None else run


def _bound(value: str | None, end: bool) -> str | None:
    """A period bound as ``Domain.select_time`` reads it, to the second (``2011-06-01`` and
    ``2011-06-01T00:00`` are one start; an end given as a date is that day's last second)."""
    if value is None:
        return None
    try:
        t = np.datetime64(value)
    except ValueError:
        return value  # refused, naming it, when the files are read
    if end and np.datetime_data(t.dtype)[0] in ("D", "M", "Y"):
        return str((t + 1).astype("datetime64[s]") - np.timedelta64(1, "s"))
    return str(t.astype("datetime64[s]"))


def _inputs(files: Sequence[Path], start: str | None, end: str | None, run_data: RunData) -> dict:
    """What a prediction folder's outputs are of and how they are scored: the input files (their
    SHA-256 where a file), the period, and the targets and QC limit of the run that predicts."""
    return {"files": [{"path": str(Path(f).resolve()), **({"sha256": sha256_of(Path(f))} if Path(f).is_file() else {})}
                      for f in files], "start": _bound(start, False), "end": _bound(end, True),
            "targets": list(run_data.targets), "max_qc": run_data.max_qc}


def _earlier_models(out: Path, inputs: dict) -> dict:
    """The models an earlier prediction into ``out`` wrote (``provenance.json``), which this one
    joins; refused where they were of other inputs or scored otherwise: the report scores every
    model file of the folder against the observations the last prediction wrote, so models of other
    files or periods would be scored against the wrong steps, and another run's QC limit or targets
    would rescore them."""
    path = out / PROVENANCE
    if not path.is_file():
        return {}
    try:
        doc = read_json_object(path)
    except DamagedRunFile as err:
        raise PredictError(f"--out {out}: {err}") from None
    if doc.get("inputs") is None:
        raise PredictError(f"--out {out} holds predictions of an older hybridlsm, which did not record their inputs: "
                           "remove the folder, or give another --out folder")
    earlier = doc["inputs"]
    if earlier != inputs:
        differ = sorted(k for k in inputs.keys() | earlier.keys() if inputs.get(k) != earlier.get(k))
        there = "; ".join(f"{k} {earlier.get(k)!r}" for k in differ)
        raise PredictError(f"--out {out} holds predictions of other inputs or scored otherwise ({there}); a report "
                           "there would score them against this prediction's observations: give another --out folder")
    models = doc.get("models")
    return dict(models) if isinstance(models, dict) else {}


def predict(run_dir: Path, label: str, files: Sequence[Path], *, start: str | None = None, end: str | None = None,
            out: Path | None = None, experiment: str | None = None) -> Path:
    """Apply a trained model to ``files`` (see the module docstring); returns the output folder.
    Writing into the run directory (the default ``out``), it holds the run's lock
    (``rundir.run_lock``): refused while another process writes there."""
    directory = saved_model_dir(run_dir, label, experiment)
    out = Path(out) if out is not None else Path(run_dir) / "applied" / label
    # the lock of the run the folder lies in, else the folder's own (a file beside it), so that two
    # predictions into one folder never mix
    lock = check_output_folder(out)
    run_data = _run_data(run_dir)
    try:
        with run_lock(lock):
            inputs = _inputs(files, start, end, run_data)
            return _apply(run_dir, directory, label, files, start, end, out, run_data, inputs,
                          _earlier_models(out, inputs))
    except RunLockedError as err:
        raise PredictError(str(err)) from None


def _open_store(path: Path, spec, model, options, label: str, start: str | None, end: str | None, out: Path):
    """(store, lazy dataset up to ``end``, output store, index of the period's first step) of a zarr
    grid, checked: it opens, the model can stream, the store has the model's inputs, its period is
    not empty, and the output store does not exist yet."""
    import xarray as xr

    try:
        source = xr.open_zarr(path)
    except Exception as err:  # zarr and xarray raise many kinds; the message says which
        raise PredictError(f"{path}: cannot be opened as a zarr store ({type(err).__name__}: {err})") from None
    source.encoding["source"] = str(path)
    try:  # before --start/--end select on it: a time axis that is not regular and increasing
        check_regular_time(source)
    except DataError as err:
        raise PredictError(str(err)) from None
    write_from = 0
    if start is not None or end is not None:
        # as for a file in memory: the model runs from the store's start (spin-up, states) up to --end
        # and only the period's steps are written
        period = source.sel(time=slice(start, end))
        if period.sizes.get("time", 0) == 0:
            raise PredictError(f"{path}: no time step between {start} and {end}")
        source = source.sel(time=slice(None, end))
        write_from = int(np.searchsorted(source["time"].values, period["time"].values[0]))
    try:
        spec.check_stream(model)
    except StreamingUnsupported as err:
        raise PredictError(f"{path}: {err}") from None
    missing = [v for v in spec.required_inputs(options) if v not in source]
    if missing:
        raise PredictError(f"{path}: model {label} ({spec.name}) needs {missing}, which the store does not give "
                           f"(it has {sorted(map(str, source.data_vars))})")  # fmt: skip
    store = out / f"{site_file_name(path.stem)}_{label}.zarr"
    if store.exists():
        raise PredictError(f"{store} exists; streamed outputs are never replaced: give another --out or remove it")
    return path, source, store, write_from


def _cut(outputs: dict, lead_in: Domain, period: Domain) -> dict:
    """The outputs of a prediction over ``lead_in`` (the file from its start) at the steps of
    ``period`` (its last steps: ``select_time(start, end)`` of the same file)."""
    first = lead_in.n_steps - period.n_steps
    if first < 0 or not np.array_equal(lead_in.time[first:], period.time):
        raise PredictError(f"{period.name}: the period's steps are not the last steps of the record before it "
                           "(internal: the lead-in and the period were cut differently)")
    return {k: v[first:] if np.ndim(v) >= 1 and np.shape(v)[0] == lead_in.n_steps else v for k, v in outputs.items()}


def _apply(run_dir: Path, directory: Path, label: str, files: Sequence[Path], start: str | None, end: str | None,
           out: Path, run_data: RunData, inputs: dict, models: dict) -> Path:
    from .evaluation.report import FLUXES, build_report

    try:
        spec, options, model = load_saved_model(directory)
    except SavedModelError as err:
        raise PredictError(str(err)) from None
    stores = [Path(f) for f in files if is_zarr_store(Path(f))]
    files = [f for f in files if not is_zarr_store(Path(f))]
    names = [site_file_name(p.stem) for p in stores]
    clash = sorted({str(p) for p, n in zip(stores, names) if names.count(n) > 1})
    if clash:
        raise PredictError(f"zarr stores {clash} would write the same output name; predict them into separate --out "
                           "folders")  # fmt: skip
    streams = [_open_store(p, spec, model, options, label, start, end, out) for p in stores]  # checked before writing
    domains = []  # (file, domain, provenance): every input read and checked before anything is written
    for f in files:
        try:
            d = domain_from_file(Path(f), out_of_range=run_data.forcing_out_of_range)
            lead_in = None
            if start is not None or end is not None:
                # the model runs from the file's start (its spin-up, the states and the antecedent
                # features that the record before --start sets) and its outputs are cut to the period
                period = d.select_time(start, end)  # the period's own errors first (outside the record, ...)
                lead_in = d.select_time(None, end)
                d = period
            if d.n_steps < 2:  # the skill table and the outputs' time axis need a time step
                what = f"the period {start} .. {end}" if start is not None or end is not None else "the file"
                raise PredictError(f"{what} holds {d.n_steps} step; give at least two")
            spec.check_required_inputs(options, d, f"model {label}")
            spec.check_domain(model, d)  # its time step, each column's land-cover class, ...
            where = spec.provenance(model, d)
        except ValueError as err:  # DataError, PredictError, and the forcing checks' ValueError
            message = str(err)
            raise PredictError(message if str(f) in message else f"{f}: {message}") from None
        domains.append((Path(f), d, where, lead_in))
    try:
        check_site_folders([d.name for _, d, _, _ in domains])
    except DataError as err:
        raise PredictError(f"{err} (e.g. two periods of one site: predict them into separate --out folders)") from None
    both = sorted({p.stem for p, _, _, _ in streams} & {d.name for _, d, _, _ in domains})
    if both:  # provenance.json has one entry per name
        raise PredictError(f"a zarr store and a file both named {both}; predict them into separate --out folders")
    provenance: dict[str, dict[str, str]] = {}
    pending = [str(store) for _, _, store, _ in streams] + [d.name for _, d, _, _ in domains]

    def record(failed: str | None = None) -> None:
        # rewritten after each output, so that a prediction failing part-way (a store's forcing out of
        # range at a late step, a full disk) leaves a provenance.json saying which outputs are whole;
        # "models": every model predicted into the folder (of the same inputs), this one last
        entry = {"trained_model": str(directory), "complete": not pending, "columns": provenance}
        if pending:
            entry["not_written"] = list(pending)
        if failed:
            entry["failed"] = failed
        doc = {"model": label, **entry, "inputs": inputs, "models": {**models, label: entry}}
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / PROVENANCE, lambda p: p.write_text(json.dumps(doc, indent=1)))

    def attrs_of(source_file: Path) -> dict:
        return {"model": label, "model_type": spec.name, "run_dir": str(Path(run_dir).resolve()),
                "trained_model": str(directory.relative_to(run_dir)), "source_file": str(source_file)}  # fmt: skip

    observed = []  # per site: whether it has observed fluxes to score
    record()
    current = ""
    try:
        for path, source, store, write_from in streams:
            current = str(store)
            spec.stream(model, source, store, land_cover=source.get("land_cover"), attrs=attrs_of(path),
                        write_from=write_from)
            provenance[path.stem] = {"store": str(store), "parameters": "per cell: the defaults of its land-cover "
                                     "class with the model's offsets (shared, or the mean of its class's training sites)"}
            pending.remove(current)
            record()
        for f, d, where, lead_in in domains:
            current = d.name
            outputs = spec.predict(model, d) if lead_in is None else _cut(spec.predict(model, lead_in), lead_in, d)
            attrs = attrs_of(f)
            if d.kind == "grid":
                write_grid_outputs(d, outputs, out / f"{site_file_name(d.name)}_{label}.nc", attrs)
            else:
                sid = d.column_ids[0]
                write_site_outputs(d, outputs, out / "predictions", f"{label}.nc",
                                   {**attrs, "parameters_from": where[0]})  # fmt: skip
                site = d.column(0)
                if all(v in site for v in FLUXES):
                    write_obs(site, np.full(d.n_steps, TEST, np.int8), "applied",
                              out / "predictions" / site_file_name(sid) / "obs.nc", targets=run_data.targets,
                              max_qc=run_data.max_qc)  # scored as the run scored its own
                observed.append(all(v in site for v in FLUXES))
            provenance[d.name] = dict(zip(d.column_ids, where))
            pending.remove(current)
            record()
    except BaseException as err:
        record(failed=f"{current}: {type(err).__name__}: {err}")
        raise
    if observed and all(observed):  # the report scores every site of its folder
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            build_report(out, config_name=f"{label} applied from {run_dir}")
    return out
