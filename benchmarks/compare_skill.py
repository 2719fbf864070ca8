"""Compare two skill files (results/skill.json layout): per config, how far the half-hourly RMSE
and NSE of every (site, model, flux, split) record present in both moved.

    python benchmarks/compare_skill.py OLD.json [NEW.json]     # NEW defaults to results/skill.json
    git show REV:results/skill.json > /tmp/old.json && python benchmarks/compare_skill.py /tmp/old.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path, nargs="?", default=ROOT / "results" / "skill.json")
    ap.add_argument("--scale", default="halfhourly")
    args = ap.parse_args()

    def records(path: Path) -> dict[tuple, dict]:
        return {(r["config"], r["site"], r["model"], r["flux"], r["split"]): r
                for r in json.loads(path.read_text()) if r["scale"] == args.scale}  # fmt: skip

    old, new = records(args.old), records(args.new)
    configs = sorted({k[0] for k in old} | {k[0] for k in new})
    for config in configs:
        common = [k for k in new if k[0] == config and k in old]
        if not common:
            print(f"{config}: no record in both files ({sum(k[0] == config for k in new)} new)")
            continue
        d_rmse = {k: abs(new[k]["rmse"] - old[k]["rmse"]) for k in common}
        d_nse = max(abs(new[k]["nse"] - old[k]["nse"]) for k in common)
        worst = max(d_rmse, key=d_rmse.get)
        print(f"{config}: {len(common)} {args.scale} records in both; max |dRMSE| {d_rmse[worst]:.4f} W m-2 "
              f"({worst[1]} {worst[2]} {worst[3]}), max |dNSE| {d_nse:.4f}")


if __name__ == "__main__":
    main()
