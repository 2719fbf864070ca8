"""Issue 11 (trust): benchmarks/reliability.py runs every fault, bad-input and security case through
the user-facing entry points and writes results/reliability.json; here into a temporary folder."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "reliability.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("hybridlsm_reliability", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the script is executed
    keep = sys.dont_write_bytecode
    sys.dont_write_bytecode = True  # no __pycache__ in benchmarks/
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = keep
    return module


@pytest.mark.slow
def test_every_reliability_case_is_ok(shared_data, tmp_path):
    reliability = _load_script()
    out = tmp_path / "reliability.json"
    try:
        code = reliability.main(["--out", str(out)])
    finally:
        sys.modules.pop("hybridlsm_reliability", None)
    records = json.loads(out.read_text())
    assert all(set(r) == {"case", "kind", "expected", "outcome", "ok", "defect"} for r in records)
    assert all(r["kind"] in ("fault", "bad_input", "security") for r in records)
    failed = [f"{r['case']}: {r['outcome']}" for r in records if not r["ok"]]
    assert not failed, "cases not ok:\n" + "\n".join(failed)
    assert code == 0
    assert len(records) >= 50
    assert {r["defect"] for r in records if r["defect"] is not None} == set(range(1, 11))
    assert sum(r["defect"] is None for r in records) >= 40
