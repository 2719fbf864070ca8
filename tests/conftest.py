"""Shared test setup: float64 for conservation and gradient checks; the location of ../shared/data."""

from pathlib import Path

import hybridlsm  # noqa: F401  (sets XLA CPU compile flags before jax starts)
import jax
import pytest

jax.config.update("jax_enable_x64", True)

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
