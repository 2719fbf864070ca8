"""``hybridlsm sweep CONFIG``: a run whose trainings go out as independent tasks to Dask distributed.

The run is the same as ``hybridlsm run`` (inputs checked first, the run directory prepared, locked,
finished and reported the same way, one skill table); only the training is spread:

- a task is one experiment (a leave-one-site-out fold) with all its models; a config with a single
  experiment (e.g. a hyper-parameter search or ablation: one model entry per setting, or an
  ensemble's members as entries) is split into one task per model entry instead, except that a
  multi-model ensemble shares its task with the entries that are its members (``entry_groups``);
- each task runs ``pipeline.train_experiment`` in a Dask worker process: it reads the sites itself
  (from the config, a few kB sent to the worker), trains, and writes its models, checkpoints and
  predictions into the run's folder; the parent gathers the timings, builds the report;
- tasks share nothing, so a hybrid task calibrates its own physics (the sequential run reuses one
  calibration per experiment): the same figures, more compute;
- the engine is a ``distributed.LocalCluster`` of worker processes (one thread each) by default, or
  an existing cluster's scheduler (``--scheduler tcp://host:8786``), whose workers must see the run
  directory and data at the same paths (a shared file system);
- the results equal the sequential run's: every task is deterministic given the config, and the
  workers compute in the parent's precision (``jax_enable_x64``);
- a failed task (one of ``TASK_ERRORS``, or its worker killed) does not stop the others: they finish
  into the run's folder, a table shows each task's result, and the first failure's error class is
  raised naming every failure and what finished (``--resume`` then trains only what failed).

The LocalCluster keeps its scratch space inside the run's folder and removes it at the end, so
nothing is written outside the run directory: its workers' ``local_directory`` and Dask's
``temporary-directory`` (where Dask otherwise creates ``dask-scratch-space`` and its lock files in
the system's temporary folder, whatever ``local_directory`` says).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import NamedTuple

from rich.markup import escape

from .config import ConfigError, RunConfig
from .data import DataError
from .models.registry import SavedModelError, get_model
from .pipeline import Experiment, console, experiments, load_domains, run, train_experiment
from .rundir import DamagedRunFile
from .training import CheckpointError, TrainingError

__all__ = ["SweepTask", "entry_groups", "sweep", "sweep_tasks"]

#: the package's errors with a one-line message, which a task returns to the parent to raise
TASK_ERRORS = (ConfigError, DataError, TrainingError, SavedModelError, CheckpointError, DamagedRunFile)

#: Dask's scratch folder inside the run's working folder (removed when the sweep ends)
DASK_SPACE = ".dask-worker-space"


class SweepTask(NamedTuple):
    """One independent task: an experiment and its model labels (None: all of them)."""

    experiment: str
    labels: tuple[str, ...] | None

    @property
    def name(self) -> str:
        return self.experiment if self.labels is None else f"{self.experiment}/{','.join(self.labels)}"


def sweep_tasks(cfg: RunConfig, exps: list[Experiment]) -> list[SweepTask]:
    """One task per experiment; with a single experiment, one per model entry, except that a
    multi-model ensemble shares a task with the entries that are its members (module docstring)."""
    if len(exps) > 1:
        return [SweepTask(e.name, None) for e in exps]
    return [SweepTask(exps[0].name, labels) for labels in entry_groups(cfg)]


def entry_groups(cfg: RunConfig) -> list[tuple[str, ...]]:
    """The labels of the model entries, each alone, except that a multi-model ensemble goes with
    the entries equal to its members (same model and options), in config order: in one task
    ``train_experiment`` trains them first and the ensemble takes them from the task's cache
    instead of training them again."""
    labels = [m.label or m.name for m in cfg.models]
    group = dict(zip(labels, range(len(labels))))
    options = {label: get_model(m.name).Options.model_validate(m.options) for label, m in zip(labels, cfg.models)}
    entries = {label: (m.name, options[label].model_dump(mode="json")) for label, m in zip(labels, cfg.models)}
    for label, m in zip(labels, cfg.models):
        if m.name != "ensemble" or options[label].members is None:
            continue
        ens = options[label]
        members = [(ens.member_model(k), ens.member(k).model_dump(mode="json")) for k in range(ens.size)]
        for other, entry in entries.items():
            if entry in members:  # merge the other's group into the ensemble's
                merged = group[other]
                group = {lab: group[label] if g == merged else g for lab, g in group.items()}
    return [tuple(lab for lab in labels if group[lab] == g) for g in dict.fromkeys(group[lab] for lab in labels)]


def _run_task(config: dict, task: tuple, config_name: str, resume: bool, run_dir: str, x64: bool) -> dict:
    """In a worker: rebuild the run's config and experiments, train one task's models (in the
    parent's floating-point precision: ``jax_enable_x64`` as there)."""
    import jax

    from .models.registry import validate_run_config

    jax.config.update("jax_enable_x64", x64)

    cfg = validate_run_config(config, source=config_name)
    exp_name, labels = task
    try:
        (exp,) = [e for e in experiments(cfg, load_domains(cfg)) if e.name == exp_name]
        return {"timings": train_experiment(cfg, exp, config_name, resume, Path(run_dir), labels=labels)}
    except TASK_ERRORS as err:  # returned, not raised: a raised one is logged by the worker as a traceback
        kind = next(cls for cls in TASK_ERRORS if isinstance(err, cls))  # a subclass comes back as its base
        return {"error": (kind.__name__, str(err))}


def _task_timings(result: dict) -> dict:
    """A task's timings, or its error raised again in this process (the same class, the same message)."""
    if "error" in result:
        name, message = result["error"]
        raise {cls.__name__: cls for cls in TASK_ERRORS}[name](message)
    return result["timings"]


def _dask_train_all(scheduler: str | None, workers: int | None):
    """``pipeline.TrainAll`` that submits ``sweep_tasks`` to Dask and shows their progress."""

    def train_all(cfg: RunConfig, exps: list[Experiment], config_name: str, resume: bool, run_dir: Path) -> dict:
        import dask
        import jax
        from distributed import Client, LocalCluster, as_completed
        from distributed.scheduler import KilledWorker
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        tasks = sweep_tasks(cfg, exps)
        config = cfg.model_dump(mode="json")
        space = run_dir / DASK_SPACE
        # Dask's own scratch files (dask-scratch-space) go to the run's folder too, not the system's temp
        with dask.config.set({"temporary-directory": str(space)}):
            cluster = None
            if scheduler is None:
                n = workers or min(len(tasks), os.cpu_count() or 1)
                # every worker is a JAX process: on a GPU none may take the memory up front, and Dask's
                # per-worker memory limit (which kills a worker above it) knows nothing of JAX's arrays
                # silence_logs: the workers' warnings (tasks cancelled when one fails, a worker
                # killed at shutdown) are not the user's concern; the failed task's error is
                cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                                       local_directory=str(space), memory_limit=0, silence_logs=logging.ERROR,
                                       env={"XLA_PYTHON_CLIENT_PREALLOCATE": "false"})  # fmt: skip
                where = f"a Dask LocalCluster of {n} worker process(es)"
            else:
                where = f"the Dask scheduler at {scheduler}"
            console.print(f"sweep: {len(tasks)} task(s) on {where}: {', '.join(t.name for t in tasks)}")
            timings: dict = {}
            status: dict[str, str] = {}  # task -> "finished", or its error
            failed: list[tuple[str, Exception]] = []
            try:
                with Client(cluster if cluster is not None else scheduler) as client:
                    x64 = bool(jax.config.jax_enable_x64)
                    futures = {client.submit(_run_task, config, tuple(t), config_name, resume, str(run_dir), x64,
                                             key=f"hybridlsm-{t.name}", pure=False): t for t in tasks}  # fmt: skip
                    columns = (TextColumn("[bold]sweep"), BarColumn(bar_width=30), MofNCompleteColumn(),
                               TextColumn("{task.fields[last]}"), TimeElapsedColumn())  # fmt: skip
                    with Progress(*columns, console=console, disable=not console.is_terminal) as bar:
                        job = bar.add_task("sweep", total=len(tasks), last="")
                        # a failed task does not stop the others: what they train stays in the run's
                        # folder, so that --resume (once the failure is mended) trains only what failed
                        for future in as_completed(futures):
                            name = futures[future].name
                            try:
                                timings.update(_task_timings(future.result()))  # a failed task's error here
                                status[name] = "finished"
                            except KilledWorker as err:
                                failed.append((name, TrainingError(f"its worker process died ({err}); out of "
                                                                   "memory? fewer --workers")))
                                status[name] = f"failed: {failed[-1][1]}"
                            except TASK_ERRORS as err:
                                failed.append((name, err))
                                status[name] = f"failed: {err}"
                            outcome = "finished" if status[name] == "finished" else "failed"
                            bar.update(job, advance=1, last=escape(f"{outcome} {name}"))
                            if not console.is_terminal:
                                console.print(escape(f"sweep: {outcome} {name}"))
            except BaseException:  # not a task's own error (a bug, Ctrl-C): what is known so far, then it
                if status:
                    _print_status(tasks, status)
                raise
            finally:
                if cluster is not None:
                    cluster.close()
                shutil.rmtree(space, ignore_errors=True)
        if failed:
            _print_status(tasks, status)
            raise _sweep_failure(tasks, status, failed)
        return timings

    return train_all


def _print_status(tasks: list[SweepTask], status: dict[str, str]) -> None:
    """The table of a sweep that failed: each task, finished or failed (and why)."""
    from rich.table import Table

    table = Table(title="sweep tasks", title_justify="left")
    table.add_column("task")
    table.add_column("result", overflow="fold")
    for t in tasks:  # messages are plain text, not rich markup ("[kg m-2 s-1]")
        table.add_row(escape(t.name), escape(status.get(t.name, "not run")))
    console.print(table)


def _sweep_failure(tasks: list[SweepTask], status: dict[str, str], failed: list[tuple[str, Exception]]) -> Exception:
    """The error of the first failed task in the tasks' order (its class, so its exit code, whatever
    order the tasks finished in), its message naming every failed task and what finished."""
    order = {t.name: i for i, t in enumerate(tasks)}
    failed = sorted(failed, key=lambda f: order[f[0]])
    finished = [t.name for t in tasks if status.get(t.name) == "finished"]
    why = "; ".join(f"{name}: {err}" for name, err in failed)
    kept = (f"; finished: {', '.join(finished)} (kept in the run's folder: --resume trains only what failed)"
            if finished else "")
    return type(failed[0][1])(f"{len(failed)} of {len(tasks)} sweep task(s) failed: {why}{kept}")


def sweep(cfg: RunConfig, config_name: str = "<config>", resume: bool = False, *, scheduler: str | None = None,
          workers: int | None = None) -> Path:
    """``pipeline.run`` with the training spread over Dask (module docstring); the run directory."""
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    if scheduler is not None:
        check_scheduler(scheduler)  # before the run directory is prepared
    return run(cfg, config_name, resume, train_all=_dask_train_all(scheduler, workers))


def check_scheduler(address: str, timeout_s: float = 10.0) -> None:
    """ConfigError unless a Dask scheduler answers at ``address`` within ``timeout_s``."""
    from distributed import Client

    loggers = [logging.getLogger(name) for name in ("distributed", "tornado", "asyncio")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:  # the failed connection's own tracebacks: the error below says it in one line
            lg.setLevel(logging.CRITICAL + 1)
        # not the process's default: a Client that is (even one that failed to connect) leaves dask's
        # global scheduler set to it, and every later dask computation here asks for a closed one
        with Client(address, timeout=f"{timeout_s:g}s", set_as_default=False):
            pass
    except (ValueError, TypeError, OSError) as err:  # a malformed address, or nothing answering (TimeoutError)
        raise ConfigError(f"--scheduler {address!r}: no Dask scheduler answers there ({type(err).__name__}: {err}); "
                          "give tcp://HOST:PORT of a running scheduler, or leave --scheduler out for a LocalCluster "
                          "on this machine") from None
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
