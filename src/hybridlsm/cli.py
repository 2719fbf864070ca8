"""The ``hybridlsm`` command line (typer).

``app`` is the top-level Typer application; each area adds its commands or a sub-app here
(``data`` now; ``run``, ``report`` and ``bench`` are added with ``@app.command()`` beside it).

    hybridlsm data inspect PATH... [--json] [--max-qc N]
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import glob
import json
import math
import os
import shutil
import socket
import tempfile
import warnings
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table


MATPLOTLIB_DIR_PREFIX = "hybridlsm-matplotlib-"
#: the file in a process's matplotlib folder that the process holds locked (flock) while it runs
MATPLOTLIB_DIR_OWNER = ".owner"
_owner_fd: int | None = None  # kept open (and so locked) until the process ends


def _remove_orphaned_matplotlib_dirs(parent: Path, host: str | None = None) -> list[Path]:
    """Remove this host's and this user's folders of ``_private_matplotlib_dir`` whose process has
    ended (a killed command cannot remove its own at exit): the kernel releases a process's lock on
    its folder's owner file when the process ends, however it ends, so a folder whose lock can be
    taken is an orphan (process ids are not used: they are reused, and differ between namespaces).
    Returns the folders removed."""
    removed = []
    host = socket.gethostname() if host is None else host
    for path in parent.glob(f"{glob.escape(MATPLOTLIB_DIR_PREFIX + host)}-*"):
        try:
            if path.is_symlink() or not path.is_dir() or path.stat().st_uid != os.getuid():
                continue
            fd = os.open(path / MATPLOTLIB_DIR_OWNER, os.O_RDWR)
        except OSError:  # removed meanwhile, or not a folder with an owner file: left alone
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # its process still runs
            os.close(fd)
            continue
        shutil.rmtree(path, ignore_errors=True)
        os.close(fd)
        removed.append(path)
    return removed


def _private_matplotlib_dir() -> None:
    """matplotlib keeps its font cache and settings in ~/.cache and ~/.config unless MPLCONFIGDIR
    says otherwise; a command of this package writes nowhere but its run directory (or --out), so
    it gets a temporary folder, removed at exit, or by a later command if the process was killed
    (rebuilding the font cache takes well under a second)."""
    global _owner_fd
    if "MPLCONFIGDIR" in os.environ:
        return
    _remove_orphaned_matplotlib_dirs(Path(tempfile.gettempdir()))
    path = tempfile.mkdtemp(prefix=f"{MATPLOTLIB_DIR_PREFIX}{socket.gethostname()}-")
    _owner_fd = os.open(Path(path) / MATPLOTLIB_DIR_OWNER, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(_owner_fd, fcntl.LOCK_EX)  # released by the kernel when this process ends
    os.environ["MPLCONFIGDIR"] = path
    atexit.register(shutil.rmtree, path, ignore_errors=True)


_private_matplotlib_dir()  # before any command imports matplotlib

app = typer.Typer(
    name="hybridlsm",
    help="Hybrid physics-ML land-surface modelling: data, runs, reports, benchmarks.",
    no_args_is_help=True,
    add_completion=False,
)

data_app = typer.Typer(help="Flux-tower and gridded data: inspect files.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}"


def _step(seconds: float, resolution: str) -> str:
    if resolution in ("WW", "MM", "YY"):
        return {"WW": "1 week", "MM": "1 month", "YY": "1 year"}[resolution]
    if seconds % 86400 == 0:
        return f"{int(seconds // 86400)} d"
    if seconds % 3600 == 0:
        return f"{int(seconds // 3600)} h"
    return f"{int(seconds // 60)} min"


def _render(reports: list[dict], console: Console) -> None:
    summary = Table(title="Files", show_lines=False)
    for col in ("file", "site", "period (start .. end, LST)", "step", "steps", "EBR", "n", "closure note"):
        summary.add_column(col, overflow="fold")
    for r in reports:
        name = Path(r["file"].split(";")[0]).name
        if "error" in r:
            summary.add_row(name, "", f"[red]ERROR[/red] {r['error']}", "", "", "", "", "")
            continue
        c = r["closure"]
        summary.add_row(
            name, r["site_id"], f"{r['start'][:16]} .. {r['end'][:16]}",
            _step(r["time_step_s"], r["time_resolution"]), str(r["n_steps"]),
            _fmt(c["ratio"]), str(c["n"]),
            c["note"],
        )
    console.print(summary)
    for r in reports:
        if "error" in r:
            continue
        t = Table(title=f"{Path(r['file'].split(';')[0]).name}: variables")
        for col in ("variable", "units", "valid fraction", "QC", "source", "gaps > 1 day"):
            t.add_column(col, overflow="fold")
        for v in r["variables"]:
            g = r["gaps_over_1d"].get(v["name"], [])
            gtxt = "-" if not g else f"{len(g)} (longest {max(x['hours'] for x in g) / 24:.1f} d)"
            t.add_row(v["name"], v["units"], f"{v['valid_fraction']:.4f}", v["qc"], v["source"], gtxt)
        console.print(t)
        for w in r["warnings"]:
            console.print(f"[yellow]warning:[/yellow] {w}", soft_wrap=True)


@data_app.command("inspect")
def data_inspect(
    paths: list[Path] = typer.Argument(..., help="Data files: FLUXNET CSV, PLUMBER2 or gridded netCDF."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    max_qc: Optional[int] = typer.Option(
        None, "--max-qc", min=0, max=3, help="Closure only over steps whose Qh and Qle QC flags are <= this (0-3)."
    ),
) -> None:
    """Per file: site, period, time step, variables with units and valid fraction, gaps longer
    than a day and the energy-balance closure sum(Qh+Qle)/sum(Rnet-Qg). Exit code 1 if any file
    could not be read."""
    from .data.inspect import inspect_file

    reports = [inspect_file(p, max_qc=max_qc) for p in paths]
    if as_json:
        typer.echo(json.dumps(reports, indent=1, default=str))
    else:
        _render(reports, Console(width=200, soft_wrap=False))
    if any("error" in r for r in reports):
        raise typer.Exit(code=1)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    app()


DEFAULT_CONFIG = Path(__file__).parent / "configs" / "demo.yaml"


def _join_distributed(coordinator: str | None, num_processes: int, process_id: int) -> None:
    """Join the jax.distributed job that --coordinator, --num-processes and --process-id describe
    (``run`` and ``devices``), or refuse options that describe none; an address JAX cannot use is a
    one-line error, not JAX's traceback."""
    from .training.sharding import initialize_distributed

    if process_id >= num_processes:
        raise typer.BadParameter(f"--process-id {process_id} is not below --num-processes {num_processes}")
    if coordinator is None:
        if num_processes > 1:
            raise typer.BadParameter("--num-processes > 1 needs --coordinator HOST:PORT (process 0's address)")
        return
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit():
        raise typer.BadParameter(f"--coordinator {coordinator!r}: expected HOST:PORT (process 0's address)")
    try:
        initialize_distributed(coordinator, num_processes, process_id)
    except (RuntimeError, ValueError) as err:
        raise typer.BadParameter(f"--coordinator {coordinator!r}: cannot join the jax.distributed job: {err}") from None


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    Console(stderr=True, highlight=False).print(f"[yellow]{category.__name__}:[/yellow] {escape(str(message))}",
                                                soft_wrap=True)


@contextlib.contextmanager
def user_errors():
    """Errors a user can cause (config, data, a failed training, a damaged or unwritable file) as one
    line with a hint and a non-zero exit code instead of a traceback; warnings as one line each."""
    from .config import ConfigError
    from .data import DataError
    from .models.registry import SavedModelError
    from .rundir import DamagedRunFile
    from .training import CheckpointError, TrainingError

    console = Console(stderr=True, highlight=False)

    def fail(kind: str, err: BaseException, code: int, hint: str = "") -> None:
        console.print(f"[red]{kind}[/red]: {escape(str(err))}" + (f"\n[dim]hint: {hint}[/dim]" if hint else ""),
                      soft_wrap=True)
        raise typer.Exit(code)

    previous = warnings.showwarning
    warnings.showwarning = _one_line_warning
    try:
        yield
    except FileExistsError as err:  # an existing run, or one another process is writing
        fail("error", err, 1)
    except ConfigError as err:
        fail("config error", err, 2, "the README's configuration section lists every key")
    except DataError as err:
        fail("data error", err, 2, "`hybridlsm data inspect FILE` shows what each file holds")
    except TrainingError as err:
        fail("training failed", err, 3, "fix the cause (forcing, targets, learning rate) and rerun")
    except (SavedModelError, CheckpointError, DamagedRunFile) as err:
        fail("damaged run file", err, 3, "delete the file named to recompute it, or start a new run")
    except OSError as err:  # a path that cannot be read or written (permissions, disk full, a directory)
        fail("file error", f"{err.filename or ''}: {err.strerror or err}".lstrip(": "), 4)
    except KeyboardInterrupt:
        fail("interrupted", "stopped by Ctrl-C; a run or sweep keeps the models that finished, and `--resume` "
             "continues it (the other commands can simply be run again)", 130)
    finally:
        warnings.showwarning = previous


def _with_output(cfg, overwrite: bool, run_dir: Path | None):
    """The config with the command line's --overwrite and --run-dir."""
    output = {"overwrite": True} if overwrite else {}
    if run_dir is not None:
        output["run_dir"] = run_dir
    return cfg.model_copy(update={"output": cfg.output.model_copy(update=output)}) if output else cfg


@app.command()
def run(
    config: Optional[Path] = typer.Argument(None, help="run config (YAML); omit with --default"),
    default: bool = typer.Option(False, "--default", help="run the built-in demo (virtual site, all models)"),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted run in its run directory"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing run directory"),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="parent folder of the run (overrides output.run_dir)"),
    coordinator: Optional[str] = typer.Option(None, "--coordinator", help="train together with other processes "
                                              "(jax.distributed): the coordinator's host:port, the same for every "
                                              "process; process 0 writes the run directory"),
    num_processes: int = typer.Option(1, "--num-processes", min=1, help="processes of the jax.distributed run"),
    process_id: int = typer.Option(0, "--process-id", min=0, help="this process's index in the run (0 writes)"),
) -> None:
    """Train every model the config names on the same data and split; write predictions, metrics and report.
    With --coordinator, every process of a jax.distributed job runs this command with the same config
    and its own --process-id; the batch is split over all their devices (training.devices: null)."""
    from .models.registry import load_run_config
    from .pipeline import ProcessZeroFailed
    from .pipeline import run as run_pipeline

    if (config is None) == (not default):
        raise typer.BadParameter("give a CONFIG file or --default (not both)")
    _join_distributed(coordinator, num_processes, process_id)  # before anything starts JAX's backend
    path = DEFAULT_CONFIG if default else config
    with user_errors():
        cfg = _with_output(load_run_config(path), overwrite, run_dir)
    with user_errors():
        try:
            out = run_pipeline(cfg, config_name=str(path if not default else "hybridlsm/configs/demo.yaml"),
                               resume=resume)  # fmt: skip
        except ProcessZeroFailed as err:
            Console(stderr=True, highlight=False).print(f"[red]error[/red]: {escape(str(err))}", soft_wrap=True)
            raise typer.Exit(1) from None
    if process_id > 0:
        Console().print(f"process {process_id}: the run has finished; process 0 wrote {out}")
        return
    Console().print(f"run directory: [green]{out}[/green]  (open {out / 'report.html'})")


@app.command()
def report(run_dir: Path = typer.Argument(..., help="a run directory written by `hybridlsm run`")) -> None:
    """Rebuild the HTML report, metrics.csv and skill.json of a run."""
    from .evaluation.report import build_report
    from .rundir import run_lock, unfinished_run

    if not (run_dir / "predictions").is_dir() and not (run_dir / "maps").is_dir():
        raise typer.BadParameter(f"{run_dir} has no predictions/ or maps/ folder; is it a run directory?")
    if unfinished_run(run_dir):
        raise typer.BadParameter(unfinished_run(run_dir))
    with user_errors(), run_lock(run_dir):  # never beside another process writing the run
        Console().print(f"report: [green]{build_report(run_dir)}[/green]")


@app.command()
def predict(
    run_dir: Path = typer.Argument(..., help="a run directory written by `hybridlsm run`"),
    files: list[Path] = typer.Argument(..., help="site files (any supported format) or gridded netCDF files"),
    model: str = typer.Option(..., "--model", help="label of the trained model in the run (e.g. physics, hybrid_flux)"),
    start: Optional[str] = typer.Option(None, "--start", help="first time to predict (e.g. 2011-03-01)"),
    end: Optional[str] = typer.Option(None, "--end", help="last time to predict"),
    out: Optional[Path] = typer.Option(None, "--out", help="output folder (default RUN_DIR/applied/MODEL)"),
    experiment: Optional[str] = typer.Option(None, "--experiment", help="which experiment's model (e.g. loso-US-Wkg)"),
) -> None:
    """Apply a trained model (no retraining) to new sites, periods or a grid: ALMA netCDF, and where
    the sites have observed fluxes, the skill table and HTML report."""
    from .predict import PredictError
    from .predict import predict as apply_model

    with user_errors():
        try:
            folder = apply_model(run_dir, model, files, start=start, end=end, out=out, experiment=experiment)
        except PredictError as err:
            _input_error(err)
    Console().print(f"predictions: [green]{folder}[/green]")


def _input_error(err: Exception) -> None:
    """One line for bad input to predict / discover (exit 2)."""
    Console(stderr=True, highlight=False).print(f"[red]error[/red]: {escape(str(err))}", soft_wrap=True)
    raise typer.Exit(2) from None


@app.command()
def discover(
    run_dir: Path = typer.Argument(..., help="a run directory written by `hybridlsm run`"),
    model: Optional[list[str]] = typer.Option(None, "--model", help="label of a model with a learned K_h "
                                              "(repeatable; default: every such model of the run)"),
    refit_epochs: int = typer.Option(300, "--refit-epochs", min=0, help="epochs of the online refit of the chosen "
                                     "law's coefficients through the physics (0: re-run the offline fit as it is)"),
    refit_lr: float = typer.Option(0.02, "--refit-lr", min=0.0, help="learning rate of the online refit"),
) -> None:
    """Fit closed forms K_h = a u^b |Ri|^c (stable and unstable branches) and the Businger-Dyer, Louis and
    |Ri| forms to the learned exchange coefficient, search a term library with a sparse regression,
    refit the chosen law's coefficients through the physics on the training steps (early stopping on
    validation), re-run it as physics and score it (RUN/discovery/, shown in the report); on a
    leave-one-site-out run, per fold, each law re-run at its fold's held-out site."""
    from .discover import Refit, discover as run_discovery
    from .evaluation.report import build_report
    from .predict import PredictError

    with user_errors():
        try:
            refit = Refit(epochs=refit_epochs, lr=refit_lr)
        except ValueError as err:
            _input_error(err)
        try:  # the report is rebuilt while the run's lock is still held
            out = run_discovery(run_dir, model, then=lambda: build_report(run_dir), refit=refit, progress=True)
        except PredictError as err:
            _input_error(err)
    files = "forms.csv, skill.csv, " + ("folds.csv, fold_summary.csv, " if (out / "folds.csv").is_file() else "")
    Console().print(f"discovery: [green]{out}[/green] ({files}discovery.json; in {run_dir / 'report.html'})")


@app.command()
def validate(
    run_dir: Path = typer.Argument(..., help="a run directory written by `hybridlsm run`"),
    years: float = typer.Option(50.0, "--years", help="length of the online run on the recycled site forcing"),
    model: Optional[list[str]] = typer.Option(None, "--model", help="only this model label (repeatable)"),
) -> None:
    """The validation hierarchy of every model of a run: offline (one step from observed states),
    partially coupled (the run's predictions) and online (a multi-decade run on the recycled forcing:
    stability, energy and water drift, emergent statistics); RUN/validation/, shown in the report."""
    from .evaluation.report import build_report
    from .evaluation.validation import ValidationRunError
    from .validate import validate_run

    with user_errors():
        try:  # the report is rebuilt while the run's lock is still held
            result = validate_run(run_dir, years=years, labels=model, then=lambda: build_report(run_dir))
        except ValidationRunError as err:
            _input_error(err)
        for label, entry in result["models"].items():
            for site, levels in entry["sites"].items():
                on = levels["online"]
                text = on["status"] if on["status"] != "ok" else (
                    f"{on['simulated_years']:.3g} y ({on['cycles']} cycles of the record; asked {years:g}), "
                    f"{sum(on['nonfinite'].values())} non-finite, drift "
                    f"{on['energy_drift_w_m2']:.2g} W m-2, {on['water_drift_mm_yr']:.2g} mm/yr"
                    f"{'' if on['stable'] else ' [red]UNSTABLE[/red]'}; "
                    f"emergent {on['emergent_within_range']} in range")  # fmt: skip
                fallen = [f"{lv} {levels[lv]['fallback_fraction']:.0%}" for lv in levels
                          if "fallback_fraction" in levels[lv]]  # fmt: skip
                Console().print(f"{label} at {site}: online {text}"
                                + (f"; fallen back: {', '.join(fallen)}" if fallen else ""))
    Console().print(f"validation: [green]{run_dir / 'validation'}[/green] (validation.json, levels.csv; in "
                    f"{run_dir / 'report.html'})")


@app.command()
def devices(
    check: bool = typer.Option(False, "--check", help="also check that training split over the devices gives "
                               "the single-device loss and gradient"),
    n: Optional[int] = typer.Option(None, "--devices", help="devices to split over in the check (default: all)"),
    coordinator: Optional[str] = typer.Option(None, "--coordinator", help="join a jax.distributed job: the "
                                              "coordinator's host:port (with --num-processes, --process-id)"),
    num_processes: int = typer.Option(1, "--num-processes", min=1, help="processes of the jax.distributed job"),
    process_id: int = typer.Option(0, "--process-id", min=0, help="this process's index in the job"),
) -> None:
    """The devices JAX sees (all processes under jax.distributed) and, with --check, a short sharded
    training check on them: one JSON object, {"devices": ..., "check": largest loss and gradient
    differences from one device, columns per shard, loss after one update}."""
    from .devices import check_sharding, describe_devices

    _join_distributed(coordinator, num_processes, process_id)
    result = {"devices": describe_devices()}
    if check:
        try:
            result["check"] = check_sharding(n).__dict__
        except ValueError as err:
            _input_error(err)
    print(json.dumps(result, indent=1))


@app.command()
def sweep(
    config: Path = typer.Argument(..., help="run config (YAML)"),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="address of a running Dask scheduler "
                                            "(default: a LocalCluster on this machine)"),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="LocalCluster worker processes (default: "
                                          "one per task, at most one per CPU)"),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted run in its run directory"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing run directory"),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="parent folder of the run (overrides output.run_dir)"),
) -> None:
    """`hybridlsm run` with its experiments (leave-one-site-out folds; or the model entries of a
    single experiment: ablations, hyper-parameter settings) trained as independent Dask tasks; the
    same run directory, skill table and report."""
    from .models.registry import load_run_config
    from .sweep import sweep as run_sweep

    with user_errors():
        cfg = _with_output(load_run_config(config), overwrite, run_dir)
        out = run_sweep(cfg, config_name=str(config), resume=resume, scheduler=scheduler, workers=workers)
    Console().print(f"run directory: [green]{out}[/green]  (open {out / 'report.html'})")
