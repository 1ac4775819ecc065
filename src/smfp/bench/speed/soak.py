"""Soak benchmark: does a long run's resident memory stay flat once the replay buffer is full?

``python -m smfp.bench.speed.soak [--steps 200000] [--env Pendulum-v1] [--buffer-size 50000]`` trains
an ordinary run (``smfp.train``: checkpoints, TensorBoard, alarms and evaluation all on, as in a
real run) on a cheap task with tiny networks, and records the process's resident set size
(VmRSS) every ``--record-every`` steps. The replay buffer is made small so that it is full early;
after that nothing should grow, so the verdict compares the RSS when the buffer first is full
with the RSS at the end (and with the largest RSS in between): growth above ``--tolerance-mib``
is reported as a leak and the script exits 1.

The buffer's tensors are allocated (and zero-filled, so really resident) when the run starts:
the training loop states their size in its first log line, and the script also measures the
RSS step of allocating an identical buffer on its own, before training.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path


def rss_mib() -> float:
    """Current resident set size in MiB (VmRSS; the peak RSS where /proc is missing)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024.0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m smfp.bench.speed.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=200_000, help="environment steps (default 200000)")
    p.add_argument("--env", default="Pendulum-v1")
    p.add_argument("--algo", default="sac", choices=["sac", "mdpo", "smfp", "flow"])
    p.add_argument("--buffer-size", type=int, default=50_000, help="replay capacity; small so it fills early")
    p.add_argument("--record-every", type=int, default=10_000, help="record RSS every N steps")
    p.add_argument("--checkpoint-every", type=int, default=50_000)
    p.add_argument("--eval-every", type=int, default=50_000)
    p.add_argument("--learning-starts", type=int, default=1_000)
    p.add_argument("--hidden", type=int, nargs="+", default=[16, 16])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--tolerance-mib", type=float, default=16.0,
                   help="RSS growth after the buffer is full that still counts as flat (default 16 MiB)")
    p.add_argument("--run-dir", default=None, help="default: runs/soak-ALGO-ENV-TIME")
    p.add_argument("--json", default=None, help="also write the records and verdict to this JSON file")
    args = p.parse_args(argv)
    for name in ("steps", "buffer_size", "record_every", "batch_size"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if any(w <= 0 for w in args.hidden):
        p.error("--hidden needs positive widths")
    return args


def verdict(records: list[dict], capacity: int, tolerance_mib: float) -> dict:
    """Flat when RSS after the buffer is full never rises more than ``tolerance_mib`` above its value then."""
    full = [r for r in records if r["step"] >= capacity]
    if len(full) < 2:
        return {"flat": None, "text": f"INCONCLUSIVE: fewer than two records after the buffer filled "
                                      f"({capacity} transitions); run more --steps"}
    base = full[0]["rss_mib"]
    end_growth = full[-1]["rss_mib"] - base
    peak_growth = max(r["rss_mib"] for r in full) - base
    per_100k = end_growth / max(full[-1]["step"] - full[0]["step"], 1) * 100_000
    flat = peak_growth <= tolerance_mib
    text = (f"{'FLAT' if flat else 'GROWING'}: after the buffer filled at step {full[0]['step']} RSS went "
            f"{base:.1f} -> {full[-1]['rss_mib']:.1f} MiB ({end_growth:+.1f} MiB, {per_100k:+.1f} MiB per 100k "
            f"steps; peak {peak_growth:+.1f} MiB; tolerance {tolerance_mib:g} MiB)")
    return {"flat": flat, "base_mib": base, "end_growth_mib": end_growth, "peak_growth_mib": peak_growth,
            "growth_per_100k_mib": per_100k, "text": text}


def main(argv=None) -> int:
    args = parse_args(argv)
    start_rss = rss_mib()
    import torch  # noqa: F401  (imported before the baseline below, so it is not counted as growth)

    from smfp.buffer import ReplayBuffer
    from smfp.config import TrainConfig
    from smfp.envs import env_dims, make_env
    from smfp.training.loop import train

    env = make_env(args.env)
    obs_dim, act_dim = env_dims(env)
    env.close()
    capacity = min(args.buffer_size, args.steps)
    before = rss_mib()
    probe = ReplayBuffer(obs_dim, act_dim, capacity)
    after = rss_mib()
    buffer_mib = probe.nbytes / 2**20
    del probe

    run_dir = args.run_dir or f"runs/soak-{args.algo}-{args.env.replace('/', '_').replace(':', '_')}-{int(time.time())}"
    cfg = TrainConfig(algo=args.algo, total_steps=args.steps, seed=0, run_dir=run_dir, threads=1)
    cfg.env.env = args.env
    cfg.policy.hidden = tuple(args.hidden)
    cfg.policy.sigma_hidden = tuple(args.hidden)
    cfg.critic.critic_hidden = tuple(args.hidden)
    cfg.update.batch_size = args.batch_size
    cfg.update.learning_starts = args.learning_starts
    cfg.buffer.buffer_size = args.buffer_size
    cfg.log.log_every = args.record_every
    cfg.log.progress = False
    cfg.eval.eval_every = args.eval_every
    cfg.eval.eval_episodes = 1
    cfg.checkpoint.checkpoint_every = args.checkpoint_every

    records: list[dict] = []
    t0 = time.perf_counter()
    cpu0 = time.process_time()

    def record(step: int, row: dict) -> None:
        if step % args.record_every or any(r["step"] == step for r in records):
            return  # evaluation rows share a step with the training row
        records.append({"step": step, "buffer_fill": min(step, capacity), "rss_mib": rss_mib(),
                        "elapsed_s": time.perf_counter() - t0, "cpu_s": time.process_time() - cpu0})
        r = records[-1]
        print(f"soak: step {step}: RSS {r['rss_mib']:.1f} MiB, buffer {r['buffer_fill']}, "
              f"{r['elapsed_s']:.0f} s", flush=True)

    print(f"soak: {args.algo} on {args.env}, {args.steps} steps, buffer {capacity} transitions "
          f"({buffer_mib:.2f} MiB; allocating one alone raised RSS by {after - before:.2f} MiB), "
          f"networks {' '.join(map(str, args.hidden))}, batch {args.batch_size}, run dir {run_dir}; "
          f"RSS {start_rss:.1f} MiB after imports, {before:.1f} MiB with the env checked", flush=True)
    result = train(cfg, callback=record)  # Ctrl-C / SIGTERM stop it gracefully: the table covers what ran
    wall = time.perf_counter() - t0

    print(f"\n{'step':>8} {'buffer':>8} {'RSS MiB':>9} {'vs full':>8} {'elapsed s':>10}")
    base = next((r["rss_mib"] for r in records if r["step"] >= capacity), None)
    for r in records:
        delta = f"{r['rss_mib'] - base:+8.1f}" if base is not None and r["step"] >= capacity else f"{'':>8}"
        print(f"{r['step']:>8} {r['buffer_fill']:>8} {r['rss_mib']:>9.1f} {delta} {r['elapsed_s']:>10.0f}")
    steps_done = result.step
    result = verdict(records, capacity, args.tolerance_mib)
    print(f"\n{result['text']}")
    print(f"{steps_done} of {args.steps} steps{' (stopped early)' if steps_done < args.steps else ''}; wall "
          f"{wall:.0f} s ({steps_done / wall:.0f} steps/s), CPU {time.process_time() - cpu0:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "buffer_mib": buffer_mib,
                                               "buffer_alloc_rss_mib": after - before, "records": records,
                                               "verdict": result, "steps_done": steps_done, "wall_s": wall},
                                              indent=2) + "\n")
    return 0 if result["flat"] is not False else 1


if __name__ == "__main__":
    sys.exit(main())
