"""Prototype (not in the library yet): merge the critic target's modes whose Q_min dip between them is within the
critic ensemble's disagreement along the segment joining them; prints, per probe state of each run, the modes
before and after and (i, j, dip, disagreement) for each pair (docs/experiments.md, 2026-12-07).

    python tools/target_modes_within_noise.py RUN_DIR [RUN_DIR ...]
"""
import sys, numpy as np, torch
from smfp.agent import load_agent
from smfp.cli.inspect import inspect_run
from smfp.monitor.modes import probe_states
from smfp.monitor.target import assess_targets

def q_all(critic, obs, a):
    o = torch.as_tensor(np.asarray(obs, np.float32)).reshape(1, -1).expand(len(a), -1)
    with torch.no_grad():
        return critic(o, torch.as_tensor(a, dtype=torch.float32)).squeeze(-1).double().numpy()  # (num_q, n)

def merged_count(critic, obs, centers, masses, min_mass=0.05, points=24, scale=1.0):
    k = len(centers)
    parent = list(range(k))
    def root(i):
        while parent[i] != i: i = parent[i]
        return i
    info = []
    ts = np.linspace(0, 1, points)[:, None]
    for i in range(k):
        for j in range(i + 1, k):
            ri, rj = root(i), root(j)
            if ri == rj: continue
            seg = centers[ri] + ts * (centers[rj] - centers[ri])
            qs = q_all(critic, obs, seg)
            qmin = qs.min(0)
            dip = min(qmin[0], qmin[-1]) - qmin.min()
            noise = (qs.max(0) - qs.min(0)).mean()
            info.append((i, j, round(float(dip), 3), round(float(noise), 3)))
            if dip <= scale * noise:
                parent[max(ri, rj)] = min(ri, rj)
    roots = [root(i) for i in range(k)]
    m = {}
    for i, r in enumerate(roots): m[r] = m.get(r, 0) + masses[i]
    return sum(v >= min_mass for v in m.values()), info

for run in sys.argv[1:]:
    ag = load_agent(run)
    states = probe_states(ag, 8, 2, 0)
    extra = [np.zeros(ag.policy.obs_dim)] if "MultiGoal" in str(ag.env_id) else []
    states = list(states) + extra
    from smfp.monitor.modes import assess_state
    reps = [assess_state(ag.policy, s, 1000) for s in states]
    targets = assess_targets(ag.policy, ag.critic, states, float(ag.alpha), [r.modes for r in reps], 0)
    before = sum(t.modes > 1 for t in targets)
    after = 0
    print(run, "alpha", round(float(ag.alpha), 4))
    for s, t in zip(states, targets):
        n, info = merged_count(ag.critic, s, np.array(t.centers), t.masses)
        after += n > 1
        print("  state", np.round(s, 2), "modes", t.modes, t.masses, "-> merged", n, info)
    print(f"  multimodal states: {before}/{len(states)} -> {after}/{len(states)}")
