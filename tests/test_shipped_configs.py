"""Every config shipped in ``configs/`` (and the built-in demo) validates against the registry, so a
broken benchmark config fails here rather than minutes into a benchmark."""

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
    cfg = load_run_config(path, check_paths=SHARED_DATA.is_dir())
    labels = [m.label or m.name for m in cfg.models]
    assert labels and len(labels) == len(set(labels)), f"{path.name}: model labels {labels} are not unique"
