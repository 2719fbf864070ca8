"""Benchmark of the differentiable LaD column (issue 3 item 4, issue 14): speed and memory.

Measures, in float32 on the default JAX backend:

- forward throughput [cell-steps/s] for 1, 64 and 1024 cells x one year of half-hourly steps
  (17520), after compilation, median of a few repeats (``block_until_ready``), of two paths:
  ``jax.jit(rollout)`` (checkpointed chunks, the process-wide fast-compilation XLA options: the
  path of site-scale training, whose batches are small) and ``simulate`` (the library's compiled forward; from 16 cells up
  one plain scan compiled with XLA's CPU fusion emitters per executable, below that the same as
  ``jax.jit(rollout)``); each returning every output and only Qle and Qh (XLA prunes the other
  outputs, as in calibration and training); and the **training path** (the target): ``jax.jit``
  of the rollout's Qle and Qh, what the training loss reads, compiled as ``column_fit`` compiles a
  training batch of that many windows (XLA's fusion emitters from ``RUN_TIME_CELLS`` up);
- the site-year (N = 1) forward time and the compile times (first call minus a warm call) of the
  forward and of the gradient;
- forward and forward+gradient time of an MSE loss of Qle and Qh against a fixed target w.r.t.
  unconstrained offsets of every CALIBRATABLE parameter, at 1 and 256 cells x one year, and their
  ratio (loss and gradient calls alternate; median of the per-pair ratios); the loss either on the
  stacked outputs of ``rollout`` (*stacked*) or accumulated step by step with ``rollout_reduce``
  (*streamed*);
- peak memory of those gradients, each in a fresh subprocess that compiles and runs only it: the
  process peak RSS (VmHWM), the peak RSS during execution alone (VmHWM after resetting it
  through /proc/self/clear_refs), and XLA's ``memory_analysis()`` of the compiled executable; for
  1 and 256 cells at 1/4, 1/2 and 1 year (growth with the number of steps; one chunk length for
  all three, a divisor of T/4), stacked and streamed, and with ``chunk = T`` (one chunk: no
  chunk-level rematerialisation; ``rollout`` still checkpoints each LaD step) for comparison;
- two ``chunk`` sizes (the default and 120, an exact divisor of 17520 near sqrt(T)); ``rollout``
  adjusts the request to a nearby divisor of T (``chunk_length``: 96 -> 80 for 17520 steps);
- the compile time of a realistic ``hybrid_param`` training step (the trainer's ``_train_step``
  on 8 windows of 10 days) in a fresh subprocess, with the process-wide XLA options and with the
  fusion emitters;
- a diagnosis: per-step overhead vs per-cell cost (a linear fit of time over N), the kernels per
  step of the compiled loops, and ablations in subprocesses over a quarter year: LAPACK ``gtsv``
  in place of the unrolled Thomas solve of the 4x4 soil system (monkeypatched in that process
  only), single-threaded XLA CPU, XLA's CPU fusion emitters switched on process-wide (XLA_FLAGS)
  or per executable (``compiler_options``), a plain scan without chunks and ``simulate``, for the
  forward at 1024 cells; LAPACK, emitters and the streamed loss for the gradient at 256 cells.

Prints a table target / measured / met and (full run, or ``--write``) writes
``results/physics_benchmark.json`` and ``docs/performance.md``.

    .venv/bin/python benchmarks/physics.py            # full run (~25 min on 2 shared cores)
    .venv/bin/python benchmarks/physics.py --quick    # small sizes (~6 min), prints only
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from hlo_text import KERNELS, HloText  # noqa: E402  (benchmarks/hlo_text.py)

from hybridlsm.physics import (  # noqa: E402
    CALIBRATABLE,
    DEFAULT_CHUNK,
    GRADIENT_CHUNK,
    RUN_TIME_CELLS,
    RUN_TIME_OPTIONS,
    Forcing,
    LaDModel,
    chunk_length,
    default_params,
    from_unconstrained,
    rollout,
    rollout_reduce,
    run_time_code,
    simulate,
    synthetic_forcing,
    to_unconstrained,
)

DTYPE = jnp.float32
STEPS_PER_YEAR = 365 * 48  # 17520 half-hourly steps
IGBP_CYCLE = ("GRA", "ENF", "DBF", "CRO", "SAV", "EBF", "OSH", "MF")  # cells cycle through these

#: key in the results -> (comparison, target)
#: (issue 14, "speed of the column"; issue 3 item 4 had 3e6, 0.5 s and 5)
TARGETS = {
    "forward_cell_steps_per_s_1024": (">=", 1.2e7),  # the training path (FORWARD_PATHS "training")
    "site_year_forward_s": ("<=", 0.1),
    "grad_fwd_ratio_256": ("<=", 4.0),
    "grad_peak_mem_gb_site_year": ("<=", 1.0),
    "grad_mem_growth_exponent": ("<", 0.9),  # XLA temp from T/2 to T; 1 = linear
    "train_step_compile_s": ("<=", 10.0),  # hybrid_param training step, 8 windows x 10 days
}
#: the training step whose compile time is measured: windows x days (``worker_train_step``)
TRAIN_STEP_WINDOWS, TRAIN_STEP_DAYS = 8, 10

GB = 1024.0**3
#: docs/performance.md: everything above this line is regenerated, everything below is kept.
MARKER = "<!-- end of generated section; the text below is kept by benchmarks/physics.py -->"


def log(msg: str) -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------------------------------------
# inputs
# ------------------------------------------------------------------------------------------------


def make_inputs(n_cells: int, n_steps: int):
    """(T, N) float32 forcing and (N,) parameters for ``n_cells`` cells.

    One synthetic site (``synthetic_forcing``) repeated over the cells with small deterministic
    per-cell perturbations: Tair +-1 K (LWdown consistent with it), SWdown +-5 %, wind +-10 %,
    precipitation +-20 %. Land cover cycles through ``IGBP_CYCLE``.
    """
    base = synthetic_forcing(n_days=n_steps / 48.0, n_sites=1, dtype=None)
    rng = np.random.default_rng(12345)
    d_t = rng.uniform(-1.0, 1.0, n_cells)
    f_sw = rng.uniform(0.95, 1.05, n_cells)
    f_wind = rng.uniform(0.9, 1.1, n_cells)
    f_p = rng.uniform(0.8, 1.2, n_cells)

    def tile(a):
        return np.tile(np.asarray(a), (1, n_cells))

    t_air = tile(base.t_air) + d_t
    lw = tile(base.lw_down) * (t_air / tile(base.t_air)) ** 4
    forcing = Forcing(
        sw_down=jnp.asarray(tile(base.sw_down) * f_sw, DTYPE),
        lw_down=jnp.asarray(lw, DTYPE),
        t_air=jnp.asarray(t_air, DTYPE),
        q_air=jnp.asarray(tile(base.q_air), DTYPE),
        p_surf=jnp.asarray(tile(base.p_surf), DTYPE),
        wind=jnp.asarray(tile(base.wind) * f_wind, DTYPE),
        precip=jnp.asarray(tile(base.precip) * f_p, DTYPE),
        time_step_s=base.time_step_s,
    )
    igbp = [IGBP_CYCLE[i % len(IGBP_CYCLE)] for i in range(n_cells)]
    params = default_params(igbp, dtype=DTYPE)
    return forcing, params


def block(x):
    return jax.block_until_ready(x)


def timed(fn, *args, repeats: int):
    """(first-call seconds, [warm wall seconds], [warm CPU seconds]) of ``fn(*args)``."""
    t0 = time.perf_counter()
    block(fn(*args))
    first = time.perf_counter() - t0
    walls, cpus = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        block(fn(*args))
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return first, walls, cpus


def timed_pair(f, g, *args, repeats: int):
    """Time ``f`` and ``g`` alternately (f, g, f, g, ...), so both see the same load on a shared
    machine; returns a dict of first-call seconds and lists of warm wall and CPU seconds."""
    out = {}
    for name, fn in (("f", f), ("g", g)):
        t0 = time.perf_counter()
        block(fn(*args))
        out["first_" + name] = time.perf_counter() - t0
        out["walls_" + name], out["cpus_" + name] = [], []
    for _ in range(repeats):
        for name, fn in (("f", f), ("g", g)):
            t0, c0 = time.perf_counter(), time.process_time()
            block(fn(*args))
            out["walls_" + name].append(time.perf_counter() - t0)
            out["cpus_" + name].append(time.process_time() - c0)
    return out


def pair_stats(t: dict) -> dict:
    """Medians and the median of the per-pair ratios g / f (wall and CPU time)."""
    wf, wg = t["walls_f"], t["walls_g"]
    return {
        "forward_s": statistics.median(wf), "grad_s": statistics.median(wg),
        "forward_min_s": min(wf), "grad_min_s": min(wg),
        "forward_cpu_s": statistics.median(t["cpus_f"]), "grad_cpu_s": statistics.median(t["cpus_g"]),
        "ratio": statistics.median([b / a for a, b in zip(wf, wg)]),
        "ratio_cpu": statistics.median([b / a for a, b in zip(t["cpus_f"], t["cpus_g"])]),
        "compile_forward_s": t["first_f"] - statistics.median(wf),
        "compile_grad_s": t["first_g"] - statistics.median(wg),
        "forward_s_all": wf, "grad_s_all": wg,
    }


# ------------------------------------------------------------------------------------------------
# the functions measured
# ------------------------------------------------------------------------------------------------


def forward_fns(model, chunk, compiler_options=None):
    """``jax.jit(rollout)`` returning every output, and returning only Qle and Qh."""
    def fwd_all(params, forcing):
        return rollout(model, params, forcing, chunk=chunk)

    def fwd_qle_qh(params, forcing):
        _, out = rollout(model, params, forcing, chunk=chunk)
        return out["Qle"], out["Qh"]

    return jit_for(fwd_all, compiler_options), jit_for(fwd_qle_qh, compiler_options)


def jit_for(fn, compiler_options=None):
    """``jax.jit(fn)`` as the library compiles it: with compiler options (``RUN_TIME_OPTIONS``)
    also traced inside ``run_time_code``, as ``physics.run_time_jit`` does."""
    if compiler_options is None:
        return jax.jit(fn)
    return jax.jit(run_time_code()(fn), compiler_options=compiler_options)


def training_options(n_cells: int):
    """The compiler options training uses for a batch of ``n_cells`` windows (``column_fit``:
    ``fit(run_time=...)``): XLA's fusion emitters from ``RUN_TIME_CELLS`` up."""
    return RUN_TIME_OPTIONS if n_cells >= RUN_TIME_CELLS else None


def simulate_fns(model):
    """The library's large-grid forward (``simulate``): every output, and only Qle and Qh."""
    return (lambda params, forcing: simulate(model, params, forcing),
            lambda params, forcing: simulate(model, params, forcing, outputs=("Qle", "Qh")))


def make_loss(model, params0, forcing, chunk, streamed=False):
    """MSE of Qle and Qh against a fixed target, as a function of unconstrained offsets of every
    CALIBRATABLE parameter (zero offsets = the defaults).

    The target is the model's own output with rs_scale x 1.5, ra_scale x 0.8 and albedo x 1.1,
    so the gradient at the defaults is not trivially small. ``streamed``: the squared errors are
    summed step by step by ``rollout_reduce`` instead of from the stacked (T, N) outputs.
    """
    raw0 = {k: to_unconstrained(k, params0[k]) for k in CALIBRATABLE}

    def params_of(delta):
        p = dict(params0)
        for k in CALIBRATABLE:
            p[k] = from_unconstrained(k, raw0[k] + delta[k])
        return p

    truth = dict(params0)
    truth["rs_scale"] = params0["rs_scale"] * 1.5
    truth["ra_scale"] = params0["ra_scale"] * 0.8
    truth["albedo"] = params0["albedo"] * 1.1
    target_le, target_h = block(forward_fns(model, chunk)[1](truth, forcing))
    n_values = target_le.size

    def squared_errors(o, target):
        return jnp.sum((o["Qle"] - target[0]) ** 2 + (o["Qh"] - target[1]) ** 2)

    def loss(delta, forcing):
        if streamed:
            _, total = rollout_reduce(model, params_of(delta), forcing, squared_errors,
                                      (target_le, target_h), chunk=chunk)
            return total / n_values
        _, o = rollout(model, params_of(delta), forcing, chunk=chunk)
        return jnp.mean((o["Qle"] - target_le) ** 2) + jnp.mean((o["Qh"] - target_h) ** 2)

    delta0 = {k: jnp.zeros_like(params0[k]) for k in CALIBRATABLE}
    return loss, delta0


def loop_kernels(compiled) -> dict:
    """Kernels executed per time step by the innermost while loops of a compiled CPU module (each
    fusion / copy / custom call is one kernel launch, a thunk, in XLA's CPU runtime)."""
    hlo = HloText(compiled.as_text())
    # innermost loops (bodies without a while of their own) run once per time step each: the
    # forward has one, the gradient three (forward, chunk recomputation with residuals, backward)
    per_loop = [{k: ops[k] for k in KERNELS} for ops in map(hlo.opcodes, hlo.innermost_loops())]
    return {"kernels_per_step": sum(sum(d.values()) for d in per_loop), "loops": per_loop}


# ------------------------------------------------------------------------------------------------
# subprocess workers
# ------------------------------------------------------------------------------------------------


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def worker_mem(n_cells: int, n_steps: int, chunk: int, run: bool, streamed: bool) -> dict:
    """Compile (and run once) only the gradient; report memory."""
    rss_import = _rss_kb("VmRSS")
    model = LaDModel()
    forcing, params = make_inputs(n_cells, n_steps)
    loss, delta0 = make_loss(model, params, forcing, chunk, streamed)
    grad = jax.jit(jax.value_and_grad(loss))
    t0 = time.perf_counter()
    compiled = grad.lower(delta0, forcing).compile()
    compile_s = time.perf_counter() - t0
    res = {"n_cells": n_cells, "n_steps": n_steps, "chunk": chunk, "streamed": streamed,
           "chunk_used": chunk_length(n_steps, chunk), "compile_s": compile_s,
           "rss_after_imports_gb": rss_import * 1024 / GB}
    ma = compiled.memory_analysis()
    if ma is not None:
        for key in ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes",
                    "alias_size_in_bytes", "generated_code_size_in_bytes"):
            res["xla_" + key.replace("_in_bytes", "_gb")] = getattr(ma, key, 0) / GB
    # VmHWM (this process image's peak RSS), not ru_maxrss: on Linux ru_maxrss survives execve,
    # so a child of a large parent would report at least the parent's RSS at spawn time.
    hwm_compile = _rss_kb("VmHWM")
    res["peak_rss_through_compile_gb"] = hwm_compile * 1024 / GB
    peak = hwm_compile
    if run:
        rss_before = _rss_kb("VmRSS")
        try:  # reset the high-water mark so that VmHWM covers the execution only
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            hwm_reset = True
        except OSError:
            hwm_reset = False
        t0 = time.perf_counter()
        value, g = block(compiled(delta0, forcing))
        res["run_s"] = time.perf_counter() - t0
        res["loss"] = float(value)
        res["grad_finite"] = bool(all(np.isfinite(np.asarray(v)).all() for v in g.values()))
        res["rss_before_run_gb"] = rss_before * 1024 / GB
        hwm = _rss_kb("VmHWM")
        peak = max(peak, hwm)
        if hwm_reset:
            res["peak_rss_during_run_gb"] = hwm * 1024 / GB
            res["run_rss_increment_gb"] = (hwm - rss_before) * 1024 / GB
    res["peak_rss_gb"] = peak * 1024 / GB
    return res


def worker_ablation(what: str, n_cells: int, n_steps: int, chunk: int, variant: str,
                    repeats: int) -> dict:
    """Throughput of the forward (Qle, Qh) or of the gradient for one variant (ablation).

    Variant words: "lapack" (LAPACK gtsv for the soil system instead of the Thomas solve),
    "compiler_options" (fusion emitters per executable), "plain scan" (chunk None), "simulate",
    "streamed" (gradient of the ``rollout_reduce`` loss); XLA_FLAGS variants come from the
    environment."""
    res = {"what": what, "variant": variant, "n_cells": n_cells, "n_steps": n_steps,
           "xla_flags": os.environ.get("XLA_FLAGS", "")}
    model = LaDModel()
    forcing, params = make_inputs(n_cells, n_steps)
    streamed = "streamed" in variant

    def build():
        if what == "fwd":
            if "simulate" in variant:
                return simulate_fns(model)[1], (params, forcing)
            options = RUN_TIME_OPTIONS if "compiler_options" in variant else None
            return forward_fns(model, None if "plain scan" in variant else chunk, options)[1], (
                params, forcing)
        loss, delta0 = make_loss(model, params, forcing, chunk, streamed)
        return jax.jit(jax.value_and_grad(loss)), (delta0, forcing)

    def first_output(out):
        out = out[1] if "simulate" in variant else out
        return np.asarray(out["Qle"] if isinstance(out, dict) else out[0]) if what == "fwd" \
            else np.asarray(out[1]["rs_scale"])

    fn, fargs = build()
    reference = None
    if "lapack" in variant:
        reference = first_output(block(fn(*fargs)))
        import hybridlsm.physics.soil as soil

        soil.solve_tridiagonal = jax.lax.linalg.tridiagonal_solve  # this process only
        fn, fargs = build()
    if what == "fwd":
        first, walls, cpus = timed(fn, *fargs, repeats=repeats)
    else:  # the gradient, alternating with its forward (the loss alone)
        loss, _ = make_loss(model, params, forcing, chunk, streamed)
        st = pair_stats(timed_pair(jax.jit(loss), fn, *fargs, repeats=repeats))
        res.update(forward_s=st["forward_s"], ratio=st["ratio"], ratio_cpu=st["ratio_cpu"])
        first = st["compile_grad_s"] + st["grad_s"]
        walls, cpus = st["grad_s_all"], [st["grad_cpu_s"]]
    if reference is not None:
        out = first_output(fn(*fargs))
        res["max_rel_diff_vs_thomas"] = float(
            np.max(np.abs(out - reference)) / max(np.max(np.abs(reference)), 1e-30))
    res.update(first_s=first, wall_s=statistics.median(walls), wall_min_s=min(walls),
               cpu_s=statistics.median(cpus))
    res["cell_steps_per_s"] = n_cells * n_steps / res["wall_s"]
    res["cell_steps_per_cpu_s"] = n_cells * n_steps / res["cpu_s"]
    return res


def worker_train_step(n_windows: int, n_days: int, compiler_options: str) -> dict:
    """Compile time of one realistic training step of ``hybrid_param`` (issue 14): the trainer's
    ``_train_step`` (value_and_grad of ``column_fit.make_loss`` through ``ColumnModel.run`` and
    ``rollout``, AdamW update) on ``n_windows`` windows of ``n_days`` half-hourly days, with the
    default ``hybrid_param`` options; first call minus a warm call, in this fresh process."""
    import equinox as eqx

    from hybridlsm.models import column_fit
    from hybridlsm.models.hybrid import multiplier_sparsity
    from hybridlsm.models.registry import get_model, validate_options
    from hybridlsm.neural import trainable_filter
    from hybridlsm.training import trainer

    n_steps = n_days * 48
    forcing, base = make_inputs(n_windows, n_steps)
    spec = get_model("hybrid_param")
    model = spec.build(validate_options("hybrid_param", {}))
    targets = ["Qle", "Qh"]
    loss_fn = column_fit.make_loss(targets, np.array([100.0, 80.0]), multiplier_sparsity)
    state0 = model.land.init_state(model.site_params(base), forcing)
    rng = np.random.default_rng(0)
    batch = {"forcing": forcing, "base": base, "state0": state0,
             "obs": jnp.asarray(rng.normal(50.0, 30.0, (n_steps, n_windows, 2)), DTYPE),
             "mask": jnp.asarray(rng.uniform(size=(n_steps, n_windows, 2)) < 0.8),
             "rnet": jnp.asarray(rng.normal(100.0, 50.0, (n_steps, n_windows)), DTYPE),
             "qg": jnp.zeros((n_steps, n_windows), DTYPE)}
    params, static = eqx.partition(model, trainable_filter(model))
    opt = trainer._optimizer(1.0, 1e-4)
    opt_state = opt.init(params)
    weights = {k: jnp.asarray(0.1, DTYPE) for k in ("energy", "sparsity", "discovery")}
    lr = jnp.asarray(1e-3, DTYPE)
    key = jax.random.key(0)
    options = RUN_TIME_OPTIONS if compiler_options == "emitters" else None
    step = trainer._train_step if options is None else trainer._train_step_run_time  # as `fit(run_time=True)`
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        out = block(step(params, opt_state, static, batch, key, weights, lr, loss_fn=loss_fn,
                         opt=opt))
        times.append(time.perf_counter() - t0)
    return {"n_windows": n_windows, "n_days": n_days, "compiler_options": compiler_options,
            "first_call_s": times[0], "warm_s": min(times[1:]),
            "compile_s": times[0] - min(times[1:]), "loss": float(out[2]),
            "finite": bool(out[5])}


def spawn(args: list[str], env_extra: dict | None = None, timeout: float = 1800) -> dict:
    env = dict(os.environ)
    env.update(env_extra or {})
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_worker", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"worker {args} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")


# ------------------------------------------------------------------------------------------------
# machine
# ------------------------------------------------------------------------------------------------


def physics_source_digest() -> str:
    """sha256 over src/hybridlsm/physics/*.py (which version of the physics was measured)."""
    import hashlib

    h = hashlib.sha256()
    for path in sorted((ROOT / "src" / "hybridlsm" / "physics").glob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def machine_info() -> dict:
    cpu = platform.processor() or "unknown"
    flags = ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name") and cpu in ("unknown", "x86_64", ""):
                    cpu = line.split(":", 1)[1].strip()
                if line.startswith("flags") and not flags:
                    flags = line
    except OSError:
        pass
    isa = [f for f in ("avx2", "fma", "avx512f") if f" {f}" in flags]
    mem_gb = None
    try:
        with open("/proc/meminfo") as fh:
            mem_gb = int(fh.readline().split()[1]) / 1024**2
    except OSError:
        pass
    dev = jax.devices()[0]
    return {
        "cpu_model": cpu,
        "cpu_isa": isa,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gb": round(mem_gb, 1) if mem_gb else None,
        "load_average_start": list(os.getloadavg()),
        "python": platform.python_version(),
        "jax_version": jax.__version__,
        "jaxlib_version": getattr(__import__("jaxlib"), "__version__", "?"),
        "backend": jax.default_backend(),
        "device": f"{dev.platform}:{dev.device_kind}",
        "dtype": "float32",
        "x64_enabled": bool(jax.config.jax_enable_x64),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "os": platform.platform(),
    }


# ------------------------------------------------------------------------------------------------
# main benchmark
# ------------------------------------------------------------------------------------------------


def fmt(x, nd=3):
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    if abs(x) >= 1e5 or (0 < abs(x) < 1e-3):
        return f"{x:.3g}"
    return f"{x:.{nd}g}"


FORWARD_PATHS = ("all_outputs", "qle_qh", "simulate_all_outputs", "simulate_qle_qh", "training")


def run(args) -> dict:
    quick = args.quick
    year = STEPS_PER_YEAR if not quick else 30 * 48
    fwd_cells = [1, 64, 1024] if not quick else [1, 16, 64]
    grad_cells = [1, 256] if not quick else [1, 16]
    big_n, grad_n = fwd_cells[-1], grad_cells[-1]
    rep_small, rep_big = (7, 3) if not quick else (3, 2)
    chunk = DEFAULT_CHUNK if args.chunk is None else args.chunk
    alt_chunk = 120 if not quick else 48  # 17520 = 146 x 120, near sqrt(17520)
    if alt_chunk == chunk:
        alt_chunk = DEFAULT_CHUNK if chunk != DEFAULT_CHUNK else chunk // 2
    model = LaDModel()
    R: dict = {"quick": quick, "n_steps_year": year, "chunk": chunk, "alt_chunk": alt_chunk,
               "chunk_used": chunk_length(year, chunk),
               "alt_chunk_used": chunk_length(year, alt_chunk), "dtype": "float32"}
    t_start = time.perf_counter()

    # ---------------- forward throughput ----------------
    log(f"== forward, {year} steps, chunk {chunk} (uses {R['chunk_used']}), float32")
    fwd_rows = []
    for n in fwd_cells:
        forcing, params = make_inputs(n, year)
        assert forcing.t_air.dtype == jnp.float32 and params["albedo"].dtype == jnp.float32
        fns = dict(zip(FORWARD_PATHS, forward_fns(model, chunk) + simulate_fns(model)
                       + forward_fns(model, chunk, training_options(n))[1:]))
        reps = rep_small if n <= 64 else rep_big
        row = {"n_cells": n}
        for name, fn in fns.items():
            if name == "training" and training_options(n) is None:  # the qle_qh executable: measured
                row[name] = row["qle_qh"]
                continue
            first, walls, cpus = timed(fn, params, forcing, repeats=reps)
            w, c = statistics.median(walls), statistics.median(cpus)
            row[name] = {"first_call_s": first, "wall_s": w, "wall_min_s": min(walls),
                         "wall_s_all": walls, "cpu_s": c,
                         "cell_steps_per_s": n * year / w, "cell_steps_per_cpu_s": n * year / c,
                         "compile_s": first - w}
            log(f"  N={n:5d} {name:20s}: {w:8.3f} s wall ({c:.3f} s CPU)  "
                f"{n * year / w:.3g} cell-steps/s   first call {first:.1f} s")
        if n == 1:
            _, out = fns["all_outputs"](params, forcing)
            R["site_year_outputs_finite"] = bool(
                all(np.isfinite(np.asarray(v)).all() for v in out.values()))
            R["site_year_mean_qle_qh"] = [float(jnp.mean(out["Qle"])), float(jnp.mean(out["Qh"]))]
            _, sim = fns["simulate_all_outputs"](params, forcing)
            R["simulate_max_abs_diff_qle_qh"] = max(
                float(jnp.max(jnp.abs(sim[k] - out[k]))) for k in ("Qle", "Qh"))
            for name, fn in zip(("all_outputs", "qle_qh"), forward_fns(model, chunk)):
                R["loop_kernels_" + name] = loop_kernels(fn.lower(params, forcing).compile())
            # simulate's executable for many cells: plain scan, emitters on
            sim_fn = forward_fns(model, None, RUN_TIME_OPTIONS)[0]
            R["loop_kernels_simulate_all_outputs"] = loop_kernels(
                sim_fn.lower(params, forcing).compile())
        fwd_rows.append(row)
        del forcing, params
    R["forward"] = fwd_rows
    by_n = {r["n_cells"]: r for r in fwd_rows}
    for name in FORWARD_PATHS:
        R[f"forward_cell_steps_per_s_{big_n}_{name}"] = by_n[big_n][name]["cell_steps_per_s"]
        R[f"forward_cell_steps_per_cpu_s_{big_n}_{name}"] = (
            by_n[big_n][name]["cell_steps_per_cpu_s"])
    # the target (issue 14): the forward of the path training uses at that many cells (the other
    # paths are kept under their own keys)
    R[f"forward_cell_steps_per_s_{big_n}"] = R[f"forward_cell_steps_per_s_{big_n}_training"]
    R["site_year_forward_s"] = by_n[1]["all_outputs"]["wall_s"]
    R["site_year_forward_qle_qh_s"] = by_n[1]["qle_qh"]["wall_s"]
    R["site_year_simulate_s"] = by_n[1]["simulate_all_outputs"]["wall_s"]
    R["compile_forward_s"] = by_n[1]["all_outputs"]["compile_s"]
    # simulate compiles for throughput (plain scan, emitters) from LARGE_BATCH_CELLS cells up
    R["compile_simulate_s"] = by_n[fwd_cells[1]]["simulate_all_outputs"]["compile_s"]
    # time(N) = T (a + b N): per-step overhead a and per-cell-step cost b (two largest N for b)
    for name in FORWARD_PATHS:
        n1, n2 = fwd_cells[-2], fwd_cells[-1]
        b = (by_n[n2][name]["wall_s"] - by_n[n1][name]["wall_s"]) / ((n2 - n1) * year)
        a = by_n[1][name]["wall_s"] / year - b
        R[f"per_step_overhead_us_{name}"] = a * 1e6
        R[f"per_cell_step_ns_{name}"] = b * 1e9

    # ---------------- gradient ----------------
    log(f"== gradient of MSE(Qle, Qh) w.r.t. {len(CALIBRATABLE)} calibratable parameters "
        "(unconstrained offsets)")
    grad_rows = []
    for n in grad_cells:
        forcing, params = make_inputs(n, year)
        # (forward chunk, streamed, gradient chunk): the last is the training path, whose loss is
        # differentiated with GRADIENT_CHUNK (column_fit.make_loss) and run forward with `chunk`
        for ch, streamed, grad_ch in ((chunk, False, chunk), (alt_chunk, False, alt_chunk), (chunk, True, chunk),
                                      (chunk, False, GRADIENT_CHUNK)):
            loss, delta0 = make_loss(model, params, forcing, ch, streamed)
            # the training path also compiles as training compiles a batch of n windows (both calls)
            options = training_options(n) if grad_ch == GRADIENT_CHUNK else None
            f_loss = jit_for(loss, options)
            grad_loss = loss if grad_ch == ch else make_loss(model, params, forcing, grad_ch, streamed)[0]
            f_grad = jit_for(jax.value_and_grad(grad_loss), options)
            reps = rep_small if n == 1 else rep_big
            st = pair_stats(timed_pair(f_loss, f_grad, delta0, forcing, repeats=reps))
            value, g = f_grad(delta0, forcing)
            gnorm = float(jnp.sqrt(sum(jnp.sum(v**2) for v in g.values())))
            finite = bool(all(np.isfinite(np.asarray(v)).all() for v in g.values()))
            if n == 1 and ch == chunk and grad_ch == ch:
                key = "loop_kernels_grad" + ("_streamed" if streamed else "")
                R[key] = loop_kernels(f_grad.lower(delta0, forcing).compile())
            row = {"n_cells": n, "chunk": ch, "chunk_used": chunk_length(year, ch), "grad_chunk": grad_ch,
                   "streamed": streamed, "emitters": options is not None, **st,
                   "loss": float(value), "grad_norm": gnorm, "grad_finite": finite}
            log(f"  N={n:4d} chunk={ch:4d} grad chunk={grad_ch:4d} {'streamed' if streamed else 'stacked '}: loss fwd "
                f"{st['forward_s']:.3f} s, value_and_grad {st['grad_s']:.3f} s, ratio "
                f"{st['ratio']:.2f} (CPU {st['ratio_cpu']:.2f}); compile grad "
                f"{st['compile_grad_s']:.1f} s; |g| = {gnorm:.3g}"
                f"{'' if finite else '  NON-FINITE GRADIENT'}")
            grad_rows.append(row)
        del forcing, params
    R["gradient"] = grad_rows
    gd = {(r["n_cells"], r["chunk"], r["streamed"], r["grad_chunk"]): r for r in grad_rows}
    for n in grad_cells:
        R[f"grad_fwd_ratio_{n}"] = gd[(n, chunk, False, GRADIENT_CHUNK)]["ratio"]  # as training differentiates
        R[f"grad_fwd_ratio_{n}_chunked"] = gd[(n, chunk, False, chunk)]["ratio"]
        R[f"grad_fwd_ratio_{n}_streamed"] = gd[(n, chunk, True, chunk)]["ratio"]
    R["grad_site_year_s"] = gd[(1, chunk, False, GRADIENT_CHUNK)]["grad_s"]
    R[f"grad_{grad_n}_cells_year_s"] = gd[(grad_n, chunk, False, GRADIENT_CHUNK)]["grad_s"]
    R["compile_grad_s"] = gd[(1, chunk, False, GRADIENT_CHUNK)]["compile_grad_s"]
    R["compile_s"] = {"forward": R["compile_forward_s"], "simulate": R["compile_simulate_s"],
                      "gradient": R["compile_grad_s"]}

    # ---------------- memory (fresh subprocess per measurement) ----------------
    # one chunk length for T/4, T/2 and T (a divisor of T/4 divides all three), so that only T
    # changes along the series
    steps_list = (year // 4, year // 2, year)
    mem_chunk = chunk_length(steps_list[0], chunk)
    R["memory_chunk"] = mem_chunk
    log(f"== gradient memory, chunk {mem_chunk}, one fresh subprocess each")
    mem = []
    specs = [(n, s, mem_chunk, True, streamed) for streamed in (False, True)
             for n in (1, grad_n) for s in steps_list]
    # chunk = T: one chunk, no chunk-level rematerialisation (each step is still checkpointed;
    # compile only)
    specs += [(n, s, s, False, False) for n in (1, grad_n) for s in steps_list]
    for n, steps, ch, do_run, streamed in specs:
        r = spawn(["mem", str(n), str(steps), str(ch), "1" if do_run else "0",
                   "1" if streamed else "0"])
        mem.append(r)
        log(f"  N={n:4d} T={steps:6d} chunk={ch:6d} {'streamed' if streamed else 'stacked '}: "
            f"XLA temp {r.get('xla_temp_size_gb', 0):.4f} GB, peak RSS {r['peak_rss_gb']:.3f} GB"
            + (f" (during the run {r.get('peak_rss_during_run_gb', 0):.3f} GB, "
               f"+{r.get('run_rss_increment_gb', 0):.4f} GB)" if do_run else " (compile only)"))
    R["memory"] = mem
    md = {(r["n_cells"], r["n_steps"], r["chunk"], r["streamed"]): r for r in mem}
    site = md[(1, year, mem_chunk, False)]
    R["grad_peak_mem_gb_site_year"] = site["peak_rss_gb"]
    R["grad_peak_rss_during_run_gb_site_year"] = site.get("peak_rss_during_run_gb")
    R["grad_run_rss_increment_gb_site_year"] = site.get("run_rss_increment_gb")
    R["grad_xla_temp_gb_site_year"] = site.get("xla_temp_size_gb")
    R["grad_peak_mem_gb_site_year_streamed"] = md[(1, year, mem_chunk, True)]["peak_rss_gb"]
    for streamed, tag in ((False, ""), (True, "_streamed")):
        big = md[(grad_n, year, mem_chunk, streamed)]
        R[f"grad_peak_mem_gb_{grad_n}_cells_year{tag}"] = big["peak_rss_gb"]
        R[f"grad_xla_temp_gb_{grad_n}_cells_year{tag}"] = big.get("xla_temp_size_gb")
    for n in (1, grad_n):
        rows = [{"n_steps": s,
                 "peak_rss_gb": md[(n, s, mem_chunk, False)]["peak_rss_gb"],
                 "run_rss_increment_gb": md[(n, s, mem_chunk, False)].get("run_rss_increment_gb"),
                 "xla_temp_gb": md[(n, s, mem_chunk, False)].get("xla_temp_size_gb"),
                 "peak_rss_gb_streamed": md[(n, s, mem_chunk, True)]["peak_rss_gb"],
                 "xla_temp_gb_streamed": md[(n, s, mem_chunk, True)].get("xla_temp_size_gb"),
                 "xla_temp_gb_no_remat": md[(n, s, s, False)].get("xla_temp_size_gb")}
                for s in steps_list]
        suffix = "" if n == 1 else f"_{n}_cells"
        R["grad_mem_vs_steps" + suffix] = rows
        # growth exponent of XLA temp memory with T from T/2 to T (1 = linear, < 1 sublinear)
        for key, out in (("xla_temp_gb_streamed", "grad_mem_growth_exponent"),
                         ("xla_temp_gb", "grad_mem_growth_exponent_stacked"),
                         ("xla_temp_gb_no_remat", "grad_mem_growth_exponent_no_remat")):
            a, b = rows[1][key], rows[2][key]
            R[out + suffix] = float(np.log2(b / a)) if a and b else None

    # ---------------- compile time of a training step (fresh subprocesses) ----------------
    log(f"== compile time of a hybrid_param training step, {TRAIN_STEP_WINDOWS} windows x "
        f"{TRAIN_STEP_DAYS} days, one fresh subprocess each")
    train_rows = []
    for options in ("default", "emitters"):
        r = spawn(["train", str(TRAIN_STEP_WINDOWS), str(TRAIN_STEP_DAYS), options])
        train_rows.append(r)
        log(f"  {options:9s}: first call {r['first_call_s']:.2f} s, warm {r['warm_s']:.4f} s, "
            f"compile {r['compile_s']:.2f} s, loss {r['loss']:.4g}, finite {r['finite']}")
    R["train_step"] = train_rows
    R["train_step_compile_s"] = train_rows[0]["compile_s"]
    R["train_step_compile_s_emitters"] = train_rows[1]["compile_s"]
    R["train_step_warm_s"] = train_rows[0]["warm_s"]

    # ---------------- diagnosis: ablations (subprocesses) ----------------
    if not args.no_ablation:
        quarter = year // 4
        log(f"== ablations, T={quarter} steps (chunk {chunk_length(quarter, chunk)}), "
            "one subprocess each")
        abl = []
        single = {"XLA_FLAGS": (os.environ.get("XLA_FLAGS", "")
                                + " --xla_cpu_multi_thread_eigen=false").strip()}
        emit = {"XLA_FLAGS": (os.environ.get("XLA_FLAGS", "")
                              + " --xla_cpu_use_fusion_emitters=true").strip()}
        runs = [("fwd", big_n, "default", None), ("fwd", big_n, "lapack", None),
                ("fwd", big_n, "default, single-threaded XLA", single),
                ("fwd", big_n, "default, emitters on (XLA_FLAGS)", emit),
                ("fwd", big_n, "default, emitters on (compiler_options)", None),
                ("fwd", big_n, "plain scan", None),
                ("fwd", big_n, "simulate (plain scan, emitters on)", None),
                ("grad", grad_n, "default", None), ("grad", grad_n, "lapack", None),
                ("grad", grad_n, "default, emitters on (XLA_FLAGS)", emit),
                ("grad", grad_n, "streamed", None)]
        for what, n, variant, env in runs:
            r = spawn([what, str(n), str(quarter), str(chunk), variant, str(rep_big)], env)
            abl.append(r)
            log(f"  {what:4s} N={n:5d} {variant:40s}: {r['wall_s']:.3f} s wall, {r['cpu_s']:.3f} s "
                f"CPU, {r['cell_steps_per_s']:.3g} cell-steps/s "
                f"({r['cell_steps_per_cpu_s']:.3g} per CPU s), first call {r['first_s']:.1f} s"
                + (f", grad/fwd {r['ratio']:.2f}" if what == "grad" else ""))
        R["ablation"] = abl

    R["benchmark_wall_s"] = time.perf_counter() - t_start
    return R


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------


def target_rows(R) -> list[tuple[str, str, str, str]]:
    """(quantity, target, measured, met): the targets, each followed by the figures of the other
    path for the same quantity (labelled, judged against the same target)."""
    big = max(r["n_cells"] for r in R["forward"])
    grad_n = max(r["n_cells"] for r in R["gradient"])
    span = "1 yr" if R["n_steps_year"] == STEPS_PER_YEAR else f"{R['n_steps_year']} steps"
    fwd = f"forward throughput, {big} cells x {span}, all outputs [cell-steps/s]"
    ratio = f"gradient / forward time, {grad_n} cells x {span}"
    growth = ("site-year gradient memory sublinear in steps (growth exponent of XLA temp from T/2 "
              "to T; 1 = linear)")
    fwd_qh = fwd.replace("all outputs", "Qle+Qh")
    rows = [
        ("forward_cell_steps_per_s_1024", f"{fwd_qh}: the training path (`jax.jit(rollout)` of the loss's "
         f"Qle and Qh, compiled as a training batch of {big} windows: with the fusion emitters from "
         f"`RUN_TIME_CELLS` = {RUN_TIME_CELLS} up)", f"forward_cell_steps_per_s_{big}"),
        ("forward_cell_steps_per_s_1024", f"{fwd}: `jax.jit(rollout)`, process-wide options",
         f"forward_cell_steps_per_s_{big}_all_outputs"),
        ("forward_cell_steps_per_s_1024", f"{fwd_qh}: `jax.jit(rollout)`, process-wide options",
         f"forward_cell_steps_per_s_{big}_qle_qh"),
        ("forward_cell_steps_per_s_1024", f"{fwd}: `simulate` (large-grid path)",
         f"forward_cell_steps_per_s_{big}_simulate_all_outputs"),
        ("forward_cell_steps_per_s_1024", f"{fwd_qh}: `simulate` (large-grid path)",
         f"forward_cell_steps_per_s_{big}_simulate_qle_qh"),
        ("site_year_forward_s", "one site-year forward after compilation [s]: `jax.jit(rollout)`, "
         "all outputs", "site_year_forward_s"),
        ("grad_fwd_ratio_256", f"{ratio}: stacked loss (`rollout`), differentiated as training does "
         f"(chunk {GRADIENT_CHUNK}: every step's carry stored; loss and gradient compiled as a training batch "
         f"of that many windows: fusion emitters from `RUN_TIME_CELLS` = {RUN_TIME_CELLS} up)",
         f"grad_fwd_ratio_{grad_n}"),
        ("grad_fwd_ratio_256", f"{ratio}: stacked loss (`rollout`), differentiated with the default chunks",
         f"grad_fwd_ratio_{grad_n}_chunked"),
        ("grad_fwd_ratio_256", f"{ratio}: streamed loss (`rollout_reduce`)",
         f"grad_fwd_ratio_{grad_n}_streamed"),
        ("grad_peak_mem_gb_site_year", "peak memory of the site-year gradient (process RSS) [GB]: "
         "stacked loss", "grad_peak_mem_gb_site_year"),
        ("grad_mem_growth_exponent", f"{growth}: streamed loss (`rollout_reduce`)",
         "grad_mem_growth_exponent"),
        ("grad_mem_growth_exponent", f"{growth}: stacked loss (the (T, N) outputs are O(T))",
         "grad_mem_growth_exponent_stacked"),
        ("train_step_compile_s", f"compile time of a `hybrid_param` training step "
         f"({TRAIN_STEP_WINDOWS} windows x {TRAIN_STEP_DAYS} days) [s]: process-wide options "
         "(fusion emitters off)", "train_step_compile_s"),
        ("train_step_compile_s", "the same with XLA's CPU fusion emitters (`RUN_TIME_OPTIONS`)",
         "train_step_compile_s_emitters"),
    ]
    out = []
    for key, label, rkey in rows:
        op, target = TARGETS[key]
        value = R.get(rkey)
        met = value is not None and {">=": value >= target, "<=": value <= target,
                                     "<": value < target}[op]
        out.append((label, f"{op} {fmt(target)}", fmt(value), "yes" if met else "NO"))
    return out


def md_table(header, rows) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def print_summary(R):
    log("")
    log("Targets (issue 14)" + ("  [QUICK SIZES: not the target sizes]" if R["quick"] else ""))
    log(md_table(("quantity", "target", "measured", "met"), target_rows(R)))
    log("")
    log(md_table(("figure", "value"), detail_rows(R)))


PATH_LABELS = {"all_outputs": "jit(rollout), all outputs", "qle_qh": "jit(rollout), Qle+Qh",
               "simulate_all_outputs": "simulate, all outputs",
               "simulate_qle_qh": "simulate, Qle+Qh",
               "training": "the training path (jit(rollout), Qle+Qh, emitters from RUN_TIME_CELLS)"}


def detail_rows(R):
    grad_n = max(r["n_cells"] for r in R["gradient"])
    rows = []
    for r in R["forward"]:
        for name in FORWARD_PATHS:
            x = r[name]
            rows.append((f"forward N={r['n_cells']}, {PATH_LABELS[name]}: wall s / cell-steps/s / "
                         "per CPU s", f"{fmt(x['wall_s'])} / {fmt(x['cell_steps_per_s'])} / "
                         f"{fmt(x['cell_steps_per_cpu_s'])}"))
    rows.append((f"compile (first call - warm call) [s]: jit(rollout) forward N=1 / simulate "
                 f"N={R['forward'][1]['n_cells']} / gradient (stacked) N=1",
                 f"{fmt(R['compile_forward_s'])} / "
                 f"{fmt(R['compile_simulate_s'])} / {fmt(R['compile_grad_s'])}"))
    for name in FORWARD_PATHS:
        rows.append((f"fit time = T (a + b N), {PATH_LABELS[name]}: a [us/step], b [ns/cell-step]",
                     f"{fmt(R[f'per_step_overhead_us_{name}'])} / "
                     f"{fmt(R[f'per_cell_step_ns_{name}'])}"))
    kern = [R.get(k, {}).get("kernels_per_step", "-") for k in (
        "loop_kernels_qle_qh", "loop_kernels_all_outputs", "loop_kernels_simulate_all_outputs",
        "loop_kernels_grad", "loop_kernels_grad_streamed")]
    rows.append(("kernels per step in the compiled loops (jit(rollout) Qle,Qh / all outputs / "
                 "simulate for many cells, all outputs / gradient stacked / streamed)",
                 " / ".join(map(str, kern))))
    for r in R["gradient"]:
        rows.append((f"gradient N={r['n_cells']}, chunk={r['chunk']} (uses {r['chunk_used']}), "
                     f"{'' if r.get('grad_chunk', r['chunk']) == r['chunk'] else 'gradient chunk %d, ' % r['grad_chunk']}"
                     f"{'streamed' if r['streamed'] else 'stacked'}{' (fusion emitters)' if r.get('emitters') else ''}: "
                     "loss fwd s / value_and_grad s"
                     " / ratio (ratio of CPU times)",
                     f"{fmt(r['forward_s'])} / {fmt(r['grad_s'])} / {fmt(r['ratio'])} "
                     f"({fmt(r['ratio_cpu'])})"))
    for n in (1, grad_n):
        suffix = "" if n == 1 else f"_{n}_cells"
        rows.append((f"gradient memory N={n}: growth exponent T/2 -> T of XLA temp (streamed / "
                     f"stacked / chunk=T)",
                     f"{fmt(R['grad_mem_growth_exponent' + suffix])} / "
                     f"{fmt(R['grad_mem_growth_exponent_stacked' + suffix])} / "
                     f"{fmt(R['grad_mem_growth_exponent_no_remat' + suffix])}"))
    for r in R.get("train_step", []):
        rows.append((f"training step `hybrid_param`, {r['n_windows']} windows x {r['n_days']} days, "
                     f"{r['compiler_options']} XLA options: first call s / warm s / compile s",
                     f"{fmt(r['first_call_s'])} / {fmt(r['warm_s'])} / {fmt(r['compile_s'])}"))
    for r in R.get("ablation", []):
        what = "forward Qle+Qh" if r["what"] == "fwd" else "value_and_grad"
        extra = f"; grad/fwd {fmt(r['ratio'])}" if r["what"] == "grad" else ""
        rows.append((f"ablation {what}, N={r['n_cells']}, T={r['n_steps']}, {r['variant']}: "
                     "cell-steps/s (per CPU s); first call s",
                     f"{fmt(r['cell_steps_per_s'])} ({fmt(r['cell_steps_per_cpu_s'])}); "
                     f"{fmt(r['first_s'])}{extra}"))
    return rows


def write_outputs(R, cmd: str):
    json_path = ROOT / "results" / "physics_benchmark.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(R, indent=2, default=float) + "\n")
    md_path = ROOT / "docs" / "performance.md"
    text = render_markdown(R, cmd)
    if md_path.exists():  # keep the hand-written analysis below the marker
        old = md_path.read_text()
        if MARKER in old:
            text += old.split(MARKER, 1)[1]
    md_path.write_text(text if text.endswith("\n") else text + "\n")
    log(f"wrote {json_path.relative_to(ROOT)} and {md_path.relative_to(ROOT)}")



def render_markdown(R, cmd: str) -> str:
    m = R["machine"]
    la0 = ", ".join(f"{x:.1f}" for x in m["load_average_start"])
    la1 = ", ".join(f"{x:.1f}" for x in m.get("load_average_end", []))
    lines = [
        "# Performance of the LaD column (physics)",
        "",
        f"Generated by `{cmd}` on {R['date']}. Everything down to the marker comment is rewritten",
        "by each run; the analysis after it is written by hand from the run recorded here.",
        "",
        f"- Physics source digest (sha256 of src/hybridlsm/physics/*.py, 16 hex): "
        f"`{R.get('physics_source_sha256_16', '?')}`",
        f"- Machine: {m['cpu_model']} ({', '.join(m['cpu_isa'])}), {m['cores']} cores "
        f"({m['cores_usable']} usable), {m['memory_gb']} GB RAM; {m['os']}",
        f"- JAX {m['jax_version']} (jaxlib {m['jaxlib_version']}), backend `{m['backend']}` "
        f"({m['device']}), dtype **{m['dtype']}** (x64 {'on' if m['x64_enabled'] else 'off'}), "
        f"XLA_FLAGS `{m['xla_flags'] or '(none)'}`",
        f"- Load average (1, 5, 15 min) at start: {la0}; at end: {la1}. The machine is shared: "
        "a load above the core count means other processes competed for the cores, so wall times "
        "are upper bounds; the CPU-time figures (``per CPU s``) are less sensitive to that.",
        f"- Sizes: one year = {R['n_steps_year']} half-hourly steps; `chunk` = {R['chunk']} "
        f"(`DEFAULT_CHUNK`; `rollout` uses {R['chunk_used']}, the nearest divisor of T, see "
        f"`chunk_length`), compared with {R['alt_chunk']} (uses {R['alt_chunk_used']}); the "
        f"memory series uses {R['memory_chunk']} for all lengths. Forcing: `synthetic_forcing` for "
        "one "
        "site tiled over N cells with small per-cell perturbations (Tair +-1 K, SWdown +-5 %, wind "
        "+-10 %, precipitation +-20 %); land cover cycles through "
        f"{', '.join(IGBP_CYCLE)}. Times are medians of repeated warm calls, `block_until_ready`.",
        "- Forward: *jit(rollout)* = `jax.jit(rollout)` with the default chunk and the "
        "process-wide XLA options (fusion emitters off for fast compilation: site runs and "
        "training batches of fewer than `RUN_TIME_CELLS` windows); *simulate* = `hybridlsm.physics.simulate`, the library's compiled "
        "forward: from `LARGE_BATCH_CELLS` = 16 cells up one plain scan without checkpointing, "
        "compiled with `RUN_TIME_OPTIONS` (XLA's CPU fusion emitters) for that executable only; "
        "for fewer cells the same as *jit(rollout)*. *all outputs* returns every output "
        "(23 ALMA variables, the way a forward run is used), *Qle+Qh* returns only those two "
        "(XLA prunes the rest, as inside calibration and training). *training path* (the "
        "target): `jax.jit(rollout)` of Qle and Qh compiled as `column_fit` compiles a training "
        f"batch of that many windows: with `RUN_TIME_OPTIONS` from `RUN_TIME_CELLS` = {RUN_TIME_CELLS} "
        "up, with the process-wide options below.",
        "- Gradient = `jax.jit(jax.value_and_grad(loss))` with loss = MSE(Qle) + MSE(Qh) against a "
        "fixed target (the model with rs_scale x 1.5, ra_scale x 0.8, albedo x 1.1), w.r.t. "
        f"unconstrained offsets of all {len(CALIBRATABLE)} CALIBRATABLE parameters per cell; the "
        "ratio divides by the jitted loss alone (same forward); loss and gradient calls alternate "
        "and the ratio is the median of the per-pair ratios, so both see the same load. "
        "*stacked*: the loss is computed from the (T, N) outputs of `rollout`; *streamed*: the "
        "squared errors are summed step by step in the scan carry by `rollout_reduce` (no (T, N) "
        "outputs or cotangents). The training path differentiates its stacked loss with "
        f"`GRADIENT_CHUNK` = {GRADIENT_CHUNK} (every step's carry stored, each step recomputed once: no "
        "chunk recomputation), its forward keeps the default chunk, and both are compiled as training "
        f"compiles a batch of that many windows (XLA's fusion emitters from `RUN_TIME_CELLS` = {RUN_TIME_CELLS} "
        "up, process-wide options below); the target row uses that pair.",
        "- Training step: the trainer's `_train_step` (value_and_grad of `column_fit.make_loss`, "
        "MSE of Qle and Qh plus the energy and sparsity terms, through `ColumnModel.run` and "
        "`rollout`, then the AdamW update) for `hybrid_param` with its default options on "
        f"{TRAIN_STEP_WINDOWS} windows of {TRAIN_STEP_DAYS} days (synthetic forcing and "
        "observations), in a fresh subprocess; compile = first call minus a warm call (tracing "
        "included), with the process-wide options and with the fusion emitters per executable.",
        "- Memory: each figure from a fresh subprocess that compiles and runs only that gradient. "
        "*peak RSS* = the process's peak resident set (VmHWM; includes the Python/JAX runtime "
        "and XLA compilation; `ru_maxrss` is not used because on Linux it carries the parent's "
        "RSS over `execve`); *run increment* = peak RSS during the execution (VmHWM reset through "
        "/proc/self/clear_refs) minus RSS just before it; *XLA temp* = "
        "`compiled.memory_analysis().temp_size_in_bytes` (the executable's scratch memory: stored "
        "chunk states, the states of one chunk's steps (each LaD step is checkpointed), stacked outputs "
        "and their cotangents).",
        "",
        "## Targets",
        "",
        md_table(("quantity", "target", "measured", "met"), target_rows(R)),
        "",
        "## All figures",
        "",
        md_table(("figure", "value"), detail_rows(R)),
        "",
    ]
    grad_n = max(r["n_cells"] for r in R["gradient"])
    for n in (1, grad_n):
        suffix = "" if n == 1 else f"_{n}_cells"
        lines += [
            f"Gradient memory against the number of steps, N = {n}:",
            "",
            md_table(("steps", "peak RSS, stacked / streamed [GB]", "run increment, stacked [GB]",
                      f"XLA temp, stacked, chunk={R['memory_chunk']} [MB]",
                      f"XLA temp, streamed, chunk={R['memory_chunk']} [MB]",
                      "XLA temp, stacked, chunk=T (one chunk) [MB]"),
                     [(r["n_steps"], f"{fmt(r['peak_rss_gb'])} / {fmt(r['peak_rss_gb_streamed'])}",
                       fmt(r["run_rss_increment_gb"]), fmt(r["xla_temp_gb"] * 1024),
                       fmt(r["xla_temp_gb_streamed"] * 1024), fmt(r["xla_temp_gb_no_remat"] * 1024))
                      for r in R["grad_mem_vs_steps" + suffix]]),
            "",
        ]
    lines.append(MARKER)
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes for development (prints only)")
    ap.add_argument("--write", action="store_true", help="write the JSON and markdown also with --quick")
    ap.add_argument("--no-write", action="store_true", help="do not write the JSON and markdown")
    ap.add_argument("--chunk", type=int, default=None, help=f"rollout chunk (default {DEFAULT_CHUNK})")
    ap.add_argument("--no-ablation", action="store_true", help="skip the ablation subprocesses")
    ap.add_argument("--_worker", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._worker:
        kind, *rest = args._worker
        if kind == "train":
            res = worker_train_step(int(rest[0]), int(rest[1]), rest[2])
        elif kind == "mem":
            res = worker_mem(int(rest[0]), int(rest[1]), int(rest[2]), rest[3] == "1",
                             rest[4] == "1")
        else:
            res = worker_ablation(kind, int(rest[0]), int(rest[1]), int(rest[2]), rest[3],
                                  int(rest[4]))
        print("RESULT " + json.dumps(res), flush=True)
        return

    if jax.config.jax_enable_x64:
        raise SystemExit("run with float32 (JAX_ENABLE_X64 unset)")
    cmd = "python benchmarks/physics.py" + ("".join(f" {a}" for a in (argv or sys.argv[1:])))
    machine = machine_info()
    log(f"{machine['cpu_model']}, {machine['cores']} cores, load {machine['load_average_start']}, "
        f"jax {machine['jax_version']} {machine['backend']}, float32")
    R = run(args)
    machine["load_average_end"] = list(os.getloadavg())
    R["machine"] = machine
    R["date"] = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    R["command"] = cmd
    R["physics_source_sha256_16"] = physics_source_digest()
    print_summary(R)
    if (not args.quick or args.write) and not args.no_write:
        write_outputs(R, cmd)


if __name__ == "__main__":
    main()
