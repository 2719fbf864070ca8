"""Shared test setup: float64 for conservation and gradient checks; XLA programs compiled with little
optimisation, and a compilation cache per test run; the location of ../shared/data."""

import os
import shutil
import time
from pathlib import Path

import hybridlsm  # noqa: F401  (sets XLA CPU compile flags before jax starts)
import jax
import pytest

jax.config.update("jax_enable_x64", True)

# XLA compilation is most of the suite's time, and the tests compile the same programs again and
# again (every model's training step in several tests, the same fixtures' rollouts), in each xdist
# worker: JAX's persistent compilation cache turns a repeat into a read (tests/test_models.py and
# test_ensemble.py: 2:51 -> 2:19 min on 2 workers). One directory per test run
# (PYTEST_XDIST_TESTRUNUID, shared by its workers; `make test` gives its two pytest sessions one id
# with --testrunuid); directories of runs over 6 hours old are removed.
# Entries are compressed, so a worker that reads one while another writes it fails to decompress it
# and compiles (JAX warns; jax_raise_persistent_cache_errors is off).
_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"main-{os.getpid()}"
COMPILATION_CACHE = Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax-compilation" / _RUN
for old in COMPILATION_CACHE.parent.glob("*"):
    try:
        stale = old != COMPILATION_CACHE and time.time() - old.stat().st_mtime > 6 * 3600
    except OSError:  # removed meanwhile by another run's process
        continue
    if stale:
        shutil.rmtree(old, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", str(COMPILATION_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
# ... and in the processes the tests start (`hybridlsm run` and `devices --check` subprocesses, Dask
# workers), which JAX configures from these variables
os.environ["JAX_COMPILATION_CACHE_DIR"] = str(COMPILATION_CACHE)
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.2"

# The tests' programs are compiled with JAX's jax_disable_most_optimizations (LLVM at -O0, no
# expensive passes): they run for seconds and compile for longer, so compiling faster wins (on 2
# cores: make test 19:51 -> 14:18 min, make test-fast 2:46 -> 2:10). `hybridlsm` and the benchmarks
# keep XLA's shipped level (3). The results agree to rounding; where a test asserts bit-identical
# results of two programs it compiles both with SHIPPED_OPTIMISATION.
# JAX_DISABLE_MOST_OPTIMIZATIONS=0 runs the suite at the shipped level. The variable also reaches
# the processes the tests start.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
jax.config.update("jax_disable_most_optimizations",
                  os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"].lower() in ("1", "true", "yes", "on", "y", "t"))
#: per-executable compiler options (``jax.jit(f, compiler_options=...)``) that restore XLA's shipped
#: optimisation under the setting above: such a program's results are bitwise those outside the tests
SHIPPED_OPTIMISATION = {"xla_backend_optimization_level": 3, "xla_llvm_disable_expensive_passes": False}
#: XLA:CPU compiles the LaD's large loop bodies ~2x faster without the fusion emitters (same math);
#: `hybridlsm` turns them off process-wide unless XLA_FLAGS turns them on; these options keep them off
FAST_COMPILE = {"xla_cpu_use_fusion_emitters": False} if jax.default_backend() == "cpu" else None

@pytest.fixture(autouse=True)
def _float64_stays_on():
    """A test that turns float64 off (as ``sweep._run_task`` does for its worker process) would run
    every later test of its worker in float32, whose results then miss their tolerances by an ulp:
    it is restored and that test fails here."""
    yield
    if not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)
        pytest.fail("the test turned jax_enable_x64 off for the tests after it in this process")


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FLUXNET_DIR = SHARED_DATA / "fluxnet"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ../shared/data; tests that need it skip with a reason when it is absent."""
    if not FLUXNET_DIR.is_dir():
        pytest.skip(f"real flux-tower data not found at {SHARED_DATA} (../shared beside the repo)")
    return SHARED_DATA


@pytest.fixture
def run_config(tmp_path):
    """``run_config(text, name) -> run directory``: writes a config text (``RUNS`` -> tmp_path/runs)
    and runs it with ``hybridlsm run`` (in process), which must succeed."""
    from typer.testing import CliRunner

    from hybridlsm.cli import app

    def run(text: str, name: str) -> Path:
        cfg = tmp_path / f"{name}.yaml"
        cfg.write_text(text.replace("RUNS", str(tmp_path / "runs")))
        result = CliRunner().invoke(app, ["run", str(cfg)])
        assert result.exit_code == 0, result.output
        return tmp_path / "runs" / name

    return run


def pytest_collection_modifyitems(config, items):
    """Tests that share a module-scoped fixture run in one xdist worker (``--dist loadgroup``), so that
    the fixture (often a trained run or a spun-up region) is built once per test run, not once in
    each worker that draws one of its tests; the other tests are spread one by one."""
    for item in items:
        if not isinstance(item, pytest.Function):
            continue
        defs = item._fixtureinfo.name2fixturedefs.values()  # the fixtures the test requests, transitively
        if any(d.scope == "module" for chain in defs for d in chain):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
