"""How well the twin's fluxes identify the stable branch of its exchange law (issue 13): the profile
of the training and validation error along the direction the data constrain least.

In stable air Ri ~ (T_a - T_s) / u^2, so K_h = a u^b |Ri|^c varies with u at a fixed temperature
difference as u^(b - 2c): the fluxes pin b - 2c, and b and c apart only through the spread of the
temperature difference at a given wind. This script takes the finished twin run of
``configs/twin-discovery.yaml`` (``benchmarks/discovery.py`` makes it), replaces its hybrid's learned
K_h by the twin's law with the stable (b, c) moved along b - 2c = const (the truth's value; a and the
unstable branch at the truth), runs it deterministically over the record and reports the RMSE of
Qh and Qle on the training and validation steps, beside the offline and online laws that
``hybridlsm discover`` found (``RUN/discovery/discovery.json``).

    python benchmarks/twin_ridge.py [--run runs/twin-discovery]

Writes results/twin_ridge.json and the block between ``<!-- twin-ridge:begin ... -->`` and
``<!-- twin-ridge:end -->`` in docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import xarray as xr

from hybridlsm.data.splits import TRAIN, VALIDATION  # first: the package sets XLA flags
from hybridlsm.data.virtual import TWIN_LAW
from hybridlsm.evaluation import metrics
from hybridlsm.models.column import domain_inputs, run_jit
from hybridlsm.models.registry import load_saved_model
from hybridlsm.physics.exchange import ExchangeLaw
from hybridlsm.predict import saved_model_dir
from hybridlsm.validate import site_domains

sys.path.insert(0, str(Path(__file__).resolve().parent))
from docblock import replace_block  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BEGIN = "<!-- twin-ridge:begin (written by benchmarks/twin_ridge.py; do not edit by hand) -->"
END = "<!-- twin-ridge:end -->"
MODEL = "hybrid_param"
STABLE_B = (0.85, 0.95, 1.05, 1.15, 1.23, 1.35, 1.45)


def rmse_of(model, law: dict, domain, obs: xr.Dataset) -> dict:
    """RMSE of Qh and Qle on the training and validation steps with ``law`` in place of the learned K_h
    (the networks deterministic)."""
    m = model.with_exchange_law(ExchangeLaw({b: tuple(v) for b, v in law.items()}))
    forcing, base = domain_inputs(m, domain)
    _, out = run_jit(m, forcing, base, m.spun_up_state(forcing, base))
    split, res = obs["split"].values, {}
    for flux in ("Qh", "Qle"):
        sim, o = np.asarray(out[flux])[:, 0], obs[flux].values
        for name, s in (("train", TRAIN), ("val", VALIDATION)):
            res[f"rmse_{flux.lower()}_{name}"] = metrics.rmse(sim, o, split == s)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "twin-discovery")
    args = ap.parse_args()
    obs = xr.load_dataset(args.run / "predictions" / "TWIN" / "obs.nc")
    domain = site_domains(args.run, {"TWIN": obs})["TWIN"]
    _, _, model = load_saved_model(saved_model_dir(args.run, MODEL))
    found = json.loads((args.run / "discovery" / "discovery.json").read_text())["models"][MODEL]
    a, b_true, c_true = TWIN_LAW["stable"]
    ridge = b_true - 2.0 * c_true
    rows = []
    for b in STABLE_B:
        c = (b - ridge) / 2.0
        law = {"stable": (a, b, c), "unstable": TWIN_LAW["unstable"]}
        rows.append({"law": "truth" if b == b_true else "on the ridge", "b_stable": b, "c_stable": c,
                     **rmse_of(model, law, domain, obs)})
        print(rows[-1], flush=True)
    for name in ("offline_law", "online_law"):
        law = found.get(name)
        if law:
            coeffs = {br: (v["a"], v["b"], v["c"]) for br, v in law.items()}
            rows.append({"law": name.replace("_law", ""), "b_stable": law["stable"]["b"], "c_stable": law["stable"]["c"],
                         **rmse_of(model, coeffs, domain, obs)})
            print(rows[-1], flush=True)
    summary = {"run": str(args.run), "b_minus_2c_true": ridge, "rows": rows,
               "command": " ".join(["python benchmarks/twin_ridge.py", *sys.argv[1:]])}
    (ROOT / "results" / "twin_ridge.json").write_text(json.dumps(summary, indent=1) + "\n")
    lines = [f"The twin's hybrid_param with its learned K_h replaced by the twin's law, the stable (b, c) moved along "
             f"b − 2c = {ridge:.2f} (the truth's; a and the unstable branch at the truth), and by the laws `hybridlsm "
             f"discover` found (their own a and unstable branch); half-hourly RMSE [W m⁻²] of the deterministic run. "
             f"`{summary['command']}`.", "",
             "| law | b stable | c stable | Qh train | Qh validation | Qle train | Qle validation |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['law']} | {r['b_stable']:.3f} | {r['c_stable']:.3f} | {r['rmse_qh_train']:.3f} | "
                     f"{r['rmse_qh_val']:.3f} | {r['rmse_qle_train']:.3f} | {r['rmse_qle_val']:.3f} |")
    replace_block(ROOT / "docs" / "results.md", BEGIN, END, "\n".join([BEGIN, *lines, END]),
                  heading="## The twin's stable branch: what the fluxes identify\n\n")


if __name__ == "__main__":
    main()
