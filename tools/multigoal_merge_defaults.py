"""Join the issue-23 defaults rows (seeds 5-9, both algorithms, run by the queue under OUT/multigoal_default_r4) into one
table and print per-algorithm summaries: python tools/multigoal_merge_defaults.py OUT_TABLE_DIR (run from the repo root)."""
import json, sys, math
from pathlib import Path
from smfp.bench.acceptance.multigoal import write, row_order
root = Path("/root/smfp-runs/multigoal_default_r4")
rows = []
for d in sorted(root.glob("*-s*")):
    f = d / "multigoal.json"
    if f.exists():
        rows += json.load(open(f))
rows.sort(key=row_order)
out = Path(sys.argv[1]); write(out, rows)
print(open(out / "multigoal.md").read())
mm = {(r["algo"], r["seed"]): r for r in json.load(open("docs/results/multigoal_alpha3_r4_l3_seeds5-9.json"))}
for algo in ("sac", "smfp"):
    rs = [r for r in rows if r["algo"] == algo]
    if not rs: continue
    print(algo, "defaults: seeds", [r["seed"] for r in rs])
    print("  goals>=10% all four:", sum(min(r["goal_counts"].values()) >= 10 for r in rs), "of", len(rs))
    print("  entropy mean %.2f" % (sum(r["goal_entropy"] for r in rs) / len(rs)), [round(r["goal_entropy"], 2) for r in rs])
    print("  TV origin", [round(r["tv_origin"], 2) for r in rs], "mean %.2f" % (sum(r["tv_origin"] for r in rs) / len(rs)))
    print("  TV 2.5", [round(r["tv_(2.5, 2.5)"], 2) for r in rs])
    print("  blocked", [r["blocked_success"] for r in rs], "mean %.1f" % (sum(r["blocked_success"] for r in rs) / len(rs)))
    print("  alpha", [round(r["alpha"], 3) for r in rs])
    print("  multimodal rows same seeds blocked", [mm[(algo, r["seed"])]["blocked_success"] for r in rs if (algo, r["seed"]) in mm])
