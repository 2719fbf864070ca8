"""How each model's training went: the loss curves and where training stopped, from the run's
checkpoints (``RUN/checkpoints/<label>/<experiment>[/<part>]/checkpoint.json``: the trainer's
history, one record per epoch).

For every training (a model in an experiment; a part such as ``round1`` or ``pretrain`` when a
model trains in stages) the report gets one row: epochs run, the best epoch (the model kept), the
best validation loss, and how it stopped (``early stop`` on validation, or the ``epoch cap``) —
the figure the multi-site issue asks for per leave-one-site-out fold. The curves plot the training
and validation losses per epoch, and, where the validation is a mean over several sites, each
site's own validation loss (``val_parts``). Written to ``RUN/training.csv`` as well. Ensemble
members trained together (one checkpoint, per-member lists) are one training per member
(``members/member_<k>``), each history up to the epoch where that member stopped.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import pandas as pd

from hybridlsm.evaluation.html_parts import img_html, table_html
from hybridlsm.training.checkpoint import META_FILE

__all__ = ["training_html", "training_runs"]

MAX_FIGURES = 24  # curves drawn (the last stage of each model and experiment); the table lists all
#: the entries of a history record with one value per member when members train together
MEMBER_ENTRIES = ("train_loss", "val_loss", "best_val", "improved", "lr", "lr_scale", "grad_norm", "val_parts")


def _stopped(history: list[dict]) -> str:
    events = [r.get("event") for r in history]
    if "early_stop" in events:
        return "early stop (validation)"
    if "phase1_early_stop" in events:
        if events[-1] == "phase1_early_stop":  # its jump to phase 2 passed the cap: nothing ran after it
            return "early stop (validation, in phase 1; phase 2 starts past the epoch cap)"
        return "epoch cap (phase 1 stopped early on validation)"
    return "epoch cap"


def _member_history(history: list[dict], k: int) -> list[dict]:
    """Member k's history from that of members trained together, up to the epoch it stopped."""
    out = []
    for r in history:
        stopped = k in r.get("members_stopped", [])
        rec = {key: v for key, v in r.items() if key not in ("event", "members_stopped")}
        rec.update({key: r[key][k] for key in MEMBER_ENTRIES if key in r})
        rec["terms"] = {name: v[k] for name, v in r.get("terms", {}).items()}
        if stopped or (r.get("event") and r["event"] != "early_stop"):
            rec["event"] = r["event"]
        out.append(rec)
        if stopped:
            break
    return out


def training_runs(run_dir: Path) -> list[dict]:
    """One entry per checkpointed training: label, experiment, part, the history and its summary."""
    root = Path(run_dir) / "checkpoints"
    runs = []
    # in the order the trainings ran (the last stage of a model last), not by name
    for meta in sorted(root.glob(f"**/{META_FILE}"), key=lambda p: p.stat().st_mtime) if root.is_dir() else []:
        parts = meta.parent.relative_to(root).parts
        if len(parts) < 2:
            continue
        try:
            saved = json.loads(meta.read_text())
            history = saved["history"]
        except (OSError, ValueError, KeyError):  # a damaged checkpoint is reported elsewhere (resume)
            continue
        if not history:
            continue
        best = saved.get("best_epoch")  # the kept model's epoch (two-phase: phase 2's best); per member: a list
        if isinstance(best, list):
            trainings = [(f"member_{k}", b, _member_history(history, k)) for k, b in enumerate(best)]
        else:
            trainings = [("", best, history)]
        for member, best, history in trainings:
            best = best or None
            # by epoch number: a history may skip epochs (a rejected update logs no epoch)
            kept = next((r for r in history if r.get("epoch") == best), None)
            runs.append({
                "model": parts[0], "experiment": parts[1], "part": "/".join([*parts[2:], member] if member else parts[2:]),
                "epochs": history[-1].get("epoch", len(history)), "best_epoch": best,
                "best_val_loss": kept["val_loss"] if kept else float("nan"), "stopped": _stopped(history),
                "history": history,
            })  # fmt: skip
    return runs


def _plot(run: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    h = run["history"]
    epochs = [r["epoch"] for r in h]
    fig, ax = plt.subplots(figsize=(6.0, 3.2))
    ax.plot(epochs, [r["train_loss"] for r in h], color="0.5", label="training")
    ax.plot(epochs, [r["val_loss"] for r in h], color="k", lw=2, label="validation (mean)")
    sites = sorted({s for r in h for s in r.get("val_parts", {})})
    if len(sites) > 1:
        for s in sites:
            ax.plot(epochs, [r.get("val_parts", {}).get(s, float("nan")) for r in h], lw=1, ls="--", label=s)
    if run["best_epoch"]:
        ax.axvline(run["best_epoch"], color="tab:green", lw=1, ls=":", label=f"kept (epoch {run['best_epoch']})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (standardised)")
    ax.set_yscale("log")
    title = f"{run['model']} / {run['experiment']}" + (f" / {run['part']}" if run["part"] else "")
    ax.set_title(f"{title}: {run['stopped']}", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def training_html(run_dir: Path, plot_dir: Path) -> str:
    """The report section: the stopping table (also ``training.csv``) and the curves; "" when the
    run has no checkpointed training."""
    runs = training_runs(run_dir)
    if not runs:
        return ""
    table = pd.DataFrame([{k: r[k] for k in ("model", "experiment", "part", "epochs", "best_epoch", "best_val_loss",
                                             "stopped")} for r in runs])  # fmt: skip
    table.to_csv(Path(run_dir) / "training.csv", index=False)
    h = ["<h2>Training</h2>",
         "<p class='note'>Per model and experiment (and stage, e.g. the calibration rounds): epochs run, the "
         "epoch whose model was kept (lowest validation loss), and whether training stopped on validation "
         "(early stopping) or at its epoch cap. Curves: training and validation loss per epoch; dashed, each "
         "validation site's own loss where several sites validate. Also in <code>training.csv</code>.</p>",
         table_html(table)]  # fmt: skip
    last = {(r["model"], r["experiment"]): r for r in runs}  # per training, its last stage (sorted parts)
    for r in list(last.values())[:MAX_FIGURES]:
        name = "_".join(x for x in (r["model"], r["experiment"], r["part"].replace("/", "_")) if x)
        fig = _plot(r, Path(plot_dir) / f"training_{name}.png")
        h.append(img_html(fig, html.escape(f"training curves {name}")))
    if len(last) > MAX_FIGURES:
        h.append(f"<p class='note'>Curves of the first {MAX_FIGURES} of {len(last)} trainings; every one is in "
                 "the table and in the checkpoints' history.</p>")
    return "\n".join(h)
