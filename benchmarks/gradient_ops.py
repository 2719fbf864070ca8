"""Where the time of the LaD gradient goes: elementwise operations per time step, before and after
XLA's fusion, in each loop of the compiled training-path loss and its gradient (issue 14).

The gradient/forward target (<= 4 at 256 cells, ``benchmarks/physics.py``) is missed. Timing says
how much; this script says why, from the compiled programs themselves (op counts, no timing noise):

- the loss and ``value_and_grad`` of it are compiled as training compiles a batch of 256 windows
  (``benchmarks/physics.py``: ``make_loss`` with ``GRADIENT_CHUNK``, ``jit_for`` with
  ``training_options``: XLA's CPU fusion emitters and the run-time softplus), with XLA's HLO dump
  of the module just before and just after its ``fusion`` pass written to a temporary directory
  (deleted at exit);
- for each innermost while loop (one time step per iteration: the forward's one loop; the
  gradient's forward loop, which stores every step's carry, and its backward loop, which recomputes
  the step and runs its adjoint) it counts the elementwise operations (not parameters, constants,
  bitcasts, broadcasts, tuples, copies) in the loop body before fusion (what the program asks for)
  and inside the fused kernels the loop executes (what runs: a producer fused into several
  consumer kernels is counted once in each), with exp/log/divide counts and the kernels per step;
- per physics function (the innermost Python frame of each operation, from the source locations
  XLA keeps in the HLO), the backward loop's counts before and after fusion.

Writes ``results/gradient_ops.json`` and the block ``gradient-ops`` of ``docs/performance.md``.

    .venv/bin/python benchmarks/gradient_ops.py     # ~10 s on 2 cores
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402

import physics as bench  # noqa: E402  (benchmarks/physics.py: the loss and how training compiles it)
from docblock import replace_block  # noqa: E402
from hlo_text import HloText  # noqa: E402

N_CELLS = 256
N_STEPS = 960  # 20 days: the counts are per step and do not depend on the length
TRANSCENDENTAL = ("exponential", "log", "log-plus-one", "power", "tanh", "sqrt", "rsqrt")
BEGIN, END = "<!-- gradient-ops:begin (written by benchmarks/gradient_ops.py; do not edit by hand) -->", \
    "<!-- gradient-ops:end -->"


def summary(counts: collections.Counter) -> dict:
    return {"elementwise_ops": sum(counts.values()), "transcendental": sum(counts[k] for k in TRANSCENDENTAL),
            "divide": counts["divide"], "multiply_add_subtract": counts["multiply"] + counts["add"] + counts["subtract"],
            "select_compare": counts["select"] + counts["compare"]}


def dumped_module(dump_dir: Path, marker: str) -> str:
    """The text of the largest dump file whose name contains ``marker`` (the dump also holds small
    helper modules that JAX compiles on the way)."""
    files = sorted(dump_dir.glob(f"*{marker}.txt"), key=lambda p: p.stat().st_size)
    if not files:
        raise SystemExit(f"no HLO dump matching {marker!r} in {dump_dir}")
    return files[-1].read_text()


def measure(fn, args, dump_dir: Path) -> dict:
    """Compile ``fn`` as training does, with the HLO dumped around the fusion pass; the counts of
    each innermost loop before fusion and executed."""
    options = dict(bench.training_options(N_CELLS) or {})
    options.update({"xla_dump_to": str(dump_dir), "xla_dump_hlo_pass_re": "^fusion$"})
    compiled = bench.jit_for(fn, options).lower(*args).compile()
    before = HloText(dumped_module(dump_dir, ".before_fusion"))
    after = HloText(compiled.as_text())
    loops_before, loops_after = before.innermost_loops(), after.innermost_loops()
    if len(loops_before) != len(loops_after):
        raise SystemExit(f"{len(loops_before)} innermost loops before fusion, {len(loops_after)} after")
    out = []
    for b, a in zip(loops_before, loops_after):
        cb, ca = before.count(b), after.count(a)
        out.append({"before_fusion": summary(cb), "executed": summary(ca), "kernels_per_step": after.kernels(a),
                    "by_function_before": dict(before.count(b, by_function=True)),
                    "by_function_executed": dict(after.count(a, by_function=True))})
    return out


def run() -> dict:
    forcing, params = bench.make_inputs(N_CELLS, N_STEPS)
    model = bench.LaDModel()
    loss, delta0 = bench.make_loss(model, params, forcing, bench.GRADIENT_CHUNK)
    result = {"n_cells": N_CELLS, "n_steps": N_STEPS, "chunk": bench.GRADIENT_CHUNK,
              "compiler_options": dict(bench.training_options(N_CELLS) or {})}
    for name, fn in (("loss", loss), ("value_and_grad", jax.value_and_grad(loss))):
        with tempfile.TemporaryDirectory(prefix="hybridlsm-hlo-") as tmp:
            result[name] = measure(fn, (delta0, forcing), Path(tmp))
    loops = {"forward (loss)": result["loss"][0]}
    if len(result["value_and_grad"]) != 2:
        raise SystemExit(f"expected the gradient's forward and backward loops, found {len(result['value_and_grad'])}")
    loops["gradient: forward, storing each carry"], loops["gradient: backward (recompute + adjoint)"] = \
        result["value_and_grad"]
    result["loops"] = {k: {kk: v[kk] for kk in ("before_fusion", "executed", "kernels_per_step")} for k, v in loops.items()}
    fwd = loops["forward (loss)"]["executed"]["elementwise_ops"]
    bwd = loops["gradient: backward (recompute + adjoint)"]
    result["backward_executed_over_forward"] = bwd["executed"]["elementwise_ops"] / fwd
    result["duplication_forward"] = fwd / loops["forward (loss)"]["before_fusion"]["elementwise_ops"]
    result["duplication_backward"] = bwd["executed"]["elementwise_ops"] / bwd["before_fusion"]["elementwise_ops"]
    return result


def markdown(R: dict) -> str:
    lines = [BEGIN, "",
             f"`python benchmarks/gradient_ops.py`: elementwise operations per time step of the training path "
             f"({R['n_cells']} windows, GRADIENT_CHUNK = {R['chunk']}, compiled with {R['compiler_options']}), "
             "in the body of each innermost loop: before XLA's fusion pass (what the program asks for) and "
             "executed (inside the fused kernels; an operation fused into several kernels counts once in each).", "",
             "| loop | ops before fusion | ops executed | executed / before | exp, log, pow, sqrt, tanh | divides | kernels |",
             "|---|---|---|---|---|---|---|"]
    for name, L in R["loops"].items():
        b, e = L["before_fusion"], L["executed"]
        lines.append(f"| {name} | {b['elementwise_ops']} | {e['elementwise_ops']} | "
                     f"{e['elementwise_ops'] / b['elementwise_ops']:.2f} | {e['transcendental']} | {e['divide']} | "
                     f"{L['kernels_per_step']} |")
    bwd = R["value_and_grad"][1]
    fwd = R["loss"][0]
    top = sorted(bwd["by_function_executed"].items(), key=lambda kv: -kv[1])[:15]
    lines += ["", "The backward loop by physics function (the innermost Python function of each operation; "
              "the forward loss's loop for comparison), the 15 largest:", "",
              "| function | backward: before fusion | backward: executed | forward: executed |", "|---|---|---|---|"]
    for fn, n in top:
        lines.append(f"| `{fn}` | {bwd['by_function_before'].get(fn, 0)} | {n} | {fwd['by_function_executed'].get(fn, 0)} |")
    lines += ["", f"The backward loop executes {R['backward_executed_over_forward']:.1f} times the forward's operations; "
              f"fusion multiplies the backward's by {R['duplication_backward']:.2f} and the forward's by "
              f"{R['duplication_forward']:.2f}.", "", END]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args(argv)
    if jax.config.jax_enable_x64:
        raise SystemExit("run with float32 (JAX_ENABLE_X64 unset)")
    R = run()
    text = markdown(R)
    print(text)
    if not args.no_write:
        (ROOT / "results").mkdir(exist_ok=True)
        (ROOT / "results" / "gradient_ops.json").write_text(json.dumps(R, indent=2) + "\n")
        replace_block(ROOT / "docs" / "performance.md", BEGIN, END, text,
                      heading="## Where the gradient's time goes (issue 14)\n\n")


if __name__ == "__main__":
    main()
