"""Regional streaming benchmark (issue 15): memory and time of the gridded regional model
(``physics.regional.RegionalModel``: LaD columns under the finite-volume air layer) streamed from
zarr in time chunks of the whole grid by ``models.regional_streaming.stream_regional``.

    python benchmarks/regional_memory.py           # 32x32, 64x64, 128x128 cells, one month hourly
    python benchmarks/regional_memory.py --quick   # 16x16 and 32x32, two days (writes nothing
                                                   # unless --write is given)

For each grid, a synthetic forcing (``data.virtual.virtual_grid``: 1 km cells, its wind components
Wind_E/Wind_N advect the air layer) is written to a zarr store in a scratch folder (removed at the
end) and streamed through the physics (float32, JAX's default; default LaD parameters per cell
from the grid's land cover; open boundaries) in chunks of ``TIME_CHUNK`` steps. As in
``benchmarks/scaling.py``, each write and each run is its own process: peak memory is the run's
high-water mark (VmHWM: the Python, JAX and dask runtime, compilation and the lazy pass over the
record included), wall time the ``stream_regional`` call (compilation included).

Writes ``results/regional_memory.json``: ``peak_mem_gb_128x128_month``, ``wall_s_128x128_month``,
``by_grid`` (ny, nx, steps, peak_mem_gb, wall_s, cell_steps_per_s per grid) and ``details``
(machine, settings, and per grid the numerical health of the run: non-finite outputs, the
air layer's departure from the forcing's air, the coupling refinement). ``--docs`` also writes a
block of ``docs/performance.md`` between ``<!-- regional-memory:begin -->`` and ``<!-- regional-memory:end -->``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from docblock import replace_block  # benchmarks/docblock.py
from scaling import _hwm_gb, log, machine  # benchmarks/scaling.py
from scaling import grid_case as scaling_grid_case
from scaling import serve_worker, write_virtual_grid

ROOT = Path(__file__).resolve().parents[1]
GRID_SIZES = ((32, 32), (64, 64), (128, 128))
STEPS = 720  # one month, hourly
TIME_CHUNK = 240  # ten days: 128x128 cells x 240 steps = 0.14 GB of float32 forcing per chunk
#: written besides the defaults, for the health check: the coupling's refinement of each step
DIAGNOSTICS = ("n_substeps", "coupling_residual")
BEGIN, END = "<!-- regional-memory:begin -->", "<!-- regional-memory:end -->"


def worker_write_grid(ny: int, nx: int, steps: int, store: str) -> dict:
    return write_virtual_grid(ny, nx, steps, store, rows=ny, time_chunk=TIME_CHUNK)  # whole-grid chunks


def worker_stream(store: str, out: str) -> dict:
    import jax.numpy as jnp
    import numpy as np
    import xarray as xr

    from hybridlsm.models.regional_streaming import REGIONAL_STREAM_OUTPUTS, stream_regional
    from hybridlsm.physics.air_layer import AirLayer
    from hybridlsm.physics.regional import RegionalModel

    src = xr.open_zarr(store)
    ny, nx, nt = src.sizes["y"], src.sizes["x"], src.sizes["time"]
    model = RegionalModel(AirLayer((ny, nx), boundary="open"))
    t0 = time.perf_counter()
    stream_regional(model, None, src, out, time_chunk=TIME_CHUNK, outputs=REGIONAL_STREAM_OUTPUTS + DIAGNOSTICS,
                    progress=False)  # fmt: skip
    wall = time.perf_counter() - t0
    peak = _hwm_gb()
    res = xr.open_zarr(out)
    # health of the run, read back lazily: non-finite values, the layer's departure from the air above
    health = {f"nonfinite_{k}": int((~np.isfinite(res[k])).sum().compute()) for k in REGIONAL_STREAM_OUTPUTS}
    health["max_abs_tair_layer_minus_tair_k"] = float(abs(res["Tair_layer"] - src["Tair"]).max().compute())
    for k in ("Qh", "Qle", "AvgSurfT", "Tair_layer"):
        health[f"range_{k}"] = [float(res[k].min().compute()), float(res[k].max().compute())]
    n_sub = res["n_substeps"].isel(y=0, x=0).values  # one value per step for the whole domain
    residual = res["coupling_residual"].max(["y", "x"]).values
    limit = 2**model.max_refinements
    health.update(steps_by_coupling_substeps={str(int(k)): int((n_sub == k).sum()) for k in np.unique(n_sub)},
                  steps_over_tolerance_at_the_limit=int(((n_sub == limit) & (residual > model.residual_tolerance)).sum()),
                  max_coupling_residual_w_m2=float(residual.max()))  # fmt: skip
    return {"ny": ny, "nx": nx, "steps": nt, "wall_s": wall, "peak_mem_gb": peak, "cell_steps_per_s": ny * nx * nt / wall,
            "transport_substeps": int(res.attrs["transport_substeps"]), "max_wind_e": res.attrs["max_wind_e"],
            "max_wind_n": res.attrs["max_wind_n"], "dtype": str(jnp.zeros(0).dtype), "health": health}  # fmt: skip


WORKERS = {"write_grid": worker_write_grid, "stream": worker_stream}


def grid_case(ny: int, nx: int, steps: int, scratch: Path) -> dict:
    return scaling_grid_case(ny, nx, steps, scratch, script=__file__, stream="stream")


def markdown(R: dict, cmd: str) -> str:
    m = R["machine"]
    lines = [BEGIN, "## Regional model streamed from zarr", "",
             f"Generated by `{cmd}` ({R['started']} to {R['finished']}); rewritten whole by each run.", "",
             f"- Machine: {m['cpu']}, {m['cores']} cores; {m['platform']}; JAX {m['jax']} ({m['backend']}).",
             f"- Load average (1, 5, 15 min) at start {tuple(round(x, 1) for x in m['load_start'])}, at end "
             f"{tuple(round(x, 1) for x in m['load_end'])}.", "",
             f"`stream_regional` over a virtual grid (1 km cells, hourly, float32) in time chunks of {R['time_chunk']} "
             "steps of the whole grid; peak memory is the process's high-water mark, wall time includes compilation.",
             "", "| grid | steps | forcing [GB] | peak memory [GB] | wall [s] | cell-steps/s | transport sub-steps, most per step |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for g in R["grids"]:
        lines.append(f"| {g['ny']}x{g['nx']} | {g['steps']} | {g['forcing_gb']:.3g} | {g['peak_mem_gb']:.2f} | "
                     f"{g['wall_s']:.1f} | {g['cell_steps_per_s']:.3g} | {g['transport_substeps']} |")  # fmt: skip
    lines.append(END)
    return "\n".join(lines)


def main(argv=None) -> None:
    if argv is None and serve_worker(WORKERS):
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="16x16 and 32x32, two days")
    p.add_argument("--write", action="store_true", help="with --quick: write the results anyway")
    p.add_argument("--docs", action="store_true", help="also write the block of docs/performance.md")
    args = p.parse_args(argv)
    sizes, steps = (((16, 16), (32, 32)), 48) if args.quick else (GRID_SIZES, STEPS)
    R: dict = {"machine": machine(), "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "time_chunk": TIME_CHUNK, "steps": steps}  # fmt: skip
    scratch = Path(tempfile.mkdtemp(prefix="hybridlsm-regional-"))
    try:
        R["grids"] = [grid_case(ny, nx, steps, scratch) for ny, nx in sizes]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    R["machine"]["load_end"] = os.getloadavg()
    R["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    big = next((g for g in R["grids"] if (g["ny"], g["nx"], g["steps"]) == (128, 128, STEPS)), None)
    summary = {
        "peak_mem_gb_128x128_month": big["peak_mem_gb"] if big else None,
        "wall_s_128x128_month": big["wall_s"] if big else None,
        "by_grid": [{k: g[k] for k in ("ny", "nx", "steps", "peak_mem_gb", "wall_s", "cell_steps_per_s")}
                    for g in R["grids"]],
        "details": R,
    }  # fmt: skip
    print(json.dumps({k: v for k, v in summary.items() if k != "details"}, indent=1))
    if args.quick and not args.write:
        return
    cmd = "python benchmarks/regional_memory.py" + (" --quick" if args.quick else "")
    (ROOT / "results").mkdir(exist_ok=True)
    (ROOT / "results" / "regional_memory.json").write_text(json.dumps(summary, indent=1) + "\n")
    log("wrote results/regional_memory.json")
    if args.docs:
        replace_block(ROOT / "docs" / "performance.md", BEGIN, END, markdown(R, cmd))
        log("wrote the regional-memory block of docs/performance.md")


if __name__ == "__main__":
    main()
