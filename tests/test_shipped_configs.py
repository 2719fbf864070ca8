"""Every config shipped in ``configs/`` (and the built-in demo) validates against the registry (options,
labels, splits, targets: ``RunConfig``'s checks), so a broken benchmark config fails here rather than
minutes into a benchmark."""

from __future__ import annotations

from pathlib import Path

import pytest

from hybridlsm.models.registry import load_run_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml")) + [ROOT / "src" / "hybridlsm" / "configs" / "demo.yaml"]
SHARED_DATA = ROOT.parent / "shared" / "data"


def test_the_configs_folder_is_found():
    assert len(CONFIGS) >= 20, f"expected the shipped configs under {ROOT / 'configs'}, found {len(CONFIGS)}"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_validates(path):
    # the data paths are checked where ../shared/data is present (always in CI)
    load_run_config(path, check_paths=SHARED_DATA.is_dir())  # raises ConfigError, naming file and key
