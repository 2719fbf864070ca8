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
@pytest.mark.parametrize("kind", ["fault", "bad_input", "security"])  # three tests: the workers share them
def test_every_reliability_case_is_ok(shared_data, tmp_path, kind):
    reliability = _load_script()
    out = tmp_path / "reliability.json"
    try:
        code = reliability.main(["--out", str(out), "--kind", kind])
        cases = [c for c in reliability.CASES if c.kind == kind]
        every_defect = {c.defect for c in reliability.CASES if c.defect is not None}
        n_all = len(reliability.CASES)
        n_new = sum(c.defect is None for c in reliability.CASES)
    finally:
        sys.modules.pop("hybridlsm_reliability", None)
    records = json.loads(out.read_text())
    assert all(set(r) == {"case", "kind", "expected", "outcome", "ok", "defect"} for r in records)
    assert [r["case"] for r in records] == [c.name for c in cases] and all(r["kind"] == kind for r in records)
    failed = [f"{r['case']}: {r['outcome']}" for r in records if not r["ok"]]
    assert not failed, "cases not ok:\n" + "\n".join(failed)
    assert code == 0
    # the whole catalogue (the three kinds): every defect found so far has a case, and more
    assert n_all >= 50 and every_defect == set(range(1, 11)) and n_new >= 40
