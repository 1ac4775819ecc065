"""Re-assess the target columns of `smfp bench multigoal` rows with today's grid, evaluation only.

Rows written before 2026-12-06 estimated the policy's TV to its critic's target on a grid that ran edge to edge of
the action box, which reads an exact sampler of MultiGoal's start-state target (piled at the box edge) 0.07 away
from it (`tests/unit/test_target.py`). This recomputes `tv_origin`, `tv_(2.5, 2.5)` and the target modes of every
row from its run's checkpoint (`smfp.bench.acceptance.multigoal.target_columns`), keeps the old values under
`*_edge_grid`, leaves every other column as it was (goals, blocked-goal test: they do not use the grid), writes the
rows as one table to OUT (`multigoal.json`, `multigoal.md`) and prints the goal check.

    python tools/multigoal_retarget.py OUT FOLDER [FOLDER ...]

Each FOLDER is an `--out` of `smfp bench multigoal` (its runs under FOLDER/SETTING/ALGO-sSEED).
"""

from __future__ import annotations

import sys
from pathlib import Path

from smfp.agent import load_agent
from smfp.bench.acceptance.multigoal import (EDGE_GRID, MultiGoalOptions, goal_check, merge_tables, target_columns,
                                             write)

RETARGETED = ("tv_origin", "tv_(2.5, 2.5)", "target_modes_origin", "target_modes_(2.5, 2.5)")


def retarget(folders: list[Path]) -> list[dict]:
    rows = merge_tables(folders)
    where = {(r["setting"], r["algo"], r["seed"]): f for f in folders for r in merge_tables([f])}
    eval_seed = MultiGoalOptions.eval_seed
    out = []
    for r in rows:
        run_dir = where[(r["setting"], r["algo"], r["seed"])] / r["setting"] / f"{r['algo']}-s{r['seed']}"
        new = target_columns(load_agent(run_dir), eval_seed)
        old = {f"{k}_{r.get('target_grid', EDGE_GRID).replace(' ', '_')}": r[k] for k in RETARGETED if k in r}
        out.append({**r, **old, **new})
        print(f"{r['setting']} {r['algo']} seed {r['seed']}: TV origin {r['tv_origin']:.3f} -> {new['tv_origin']:.3f}, "
              f"(2.5, 2.5) {r['tv_(2.5, 2.5)']:.3f} -> {new['tv_(2.5, 2.5)']:.3f}", file=sys.stderr, flush=True)
    return out


if __name__ == "__main__":
    target = Path(sys.argv[1])
    rows = retarget([Path(f) for f in sys.argv[2:]])
    write(target, rows)
    print("\n".join(goal_check(rows)))
