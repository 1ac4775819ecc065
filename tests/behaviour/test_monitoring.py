"""Training-health alarms, the non-finite guard and recovery, and ``smfp report`` (docs/reliability.md).

Every alarm is provoked on purpose in a real (tiny) training run: rewards on a wildly wrong scale
(exploding gradients), an output noise forced tiny (entropy collapse), a task whose best action
is at the bounds (saturation), a mirror-descent weight far too small on a task whose best action
keeps moving (KL to the anchor too large), a task whose two good actions become one sharp one (mode
collapse) and a burst of rewards whose squared TD error overflows float32 (non-finite losses). A
healthy short run raises none.

Each provoked alarm is a signal with a wide margin, not a value that happens to cross its threshold
on one CPU's floating-point path: the settings were checked on seeds 0-5 (mode collapse) and 0-4
(the others), with PyTorch's default and ``ATEN_CPU_CAPABILITY=avx2`` kernels.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import load_weights_only, read_jsonl, run_cli, tiny_config
from smfp.config import AlarmConfig
from smfp.monitor.alarms import AlarmMonitor, kl_watch
from smfp.storage.checkpoint import list_checkpoints, load_checkpoint
from smfp.training.loop import train

def _one_state(run_dir, name: str, total_steps: int, **kw):
    cfg = tiny_config(run_dir, env=f"smfp_test_envs:SmfpHealth{name}-v0", total_steps=total_steps,
                      eval_every=0, log_every=100, **kw)
    cfg.update.gamma = 0.0
    return cfg


def _alarms(run_dir) -> list[dict]:
    path = run_dir / "alerts.jsonl"
    return read_jsonl(path) if path.exists() else []


def _train(cfg):
    cfg.log.tensorboard = False
    result = train(cfg)
    assert result.step == cfg.total_steps  # an alarm warns; it never stops the run
    return _alarms(Path(cfg.run_dir))


# --- the monitor itself, on hand-made metrics rows --------------------------------------------------------

def test_each_alarm_fires_once_while_its_condition_holds_and_rearms(tmp_path):
    lines: list[str] = []
    mon = AlarmMonitor(AlarmConfig(entropy_collapse_window=2), tmp_path, target_entropy=-2.0, target_kl=0.05,
                       uses_md=True, emit=lines.append)
    healthy = {"train/entropy": 1.0, "train/entropy_m1": 0.5, "train/grad_norm_actor": 1.0,
               "train/grad_norm_critic": 5.0, "train/saturation": 0.01, "train/kl_anchor": 0.04,
               "train/skipped_updates": 0.0, "health/modes": 3.0}
    sick = {"train/entropy": -9.0, "train/entropy_m1": -9.01, "train/grad_norm_critic": float("inf"),
            "train/saturation": 0.9, "train/kl_anchor": 0.6, "train/skipped_updates": 4.0, "health/modes": 1.0}
    assert mon.observe(1, healthy) == []
    first = mon.observe(2, {**healthy, **sick})
    assert {a.alarm for a in first} == {"mode_collapse", "exploding_gradients", "saturation", "kl_too_large",
                                        "nonfinite_updates"}  # entropy collapse needs 2 rows in a row
    second = mon.observe(3, {**healthy, **sick, "train/skipped_updates": 4.0})
    assert [a.alarm for a in second] == ["entropy_collapse"]  # the others are still active: not repeated
    assert mon.observe(4, healthy) == []  # everything clears ...
    again = mon.observe(5, {**healthy, "train/saturation": 0.7})
    assert [a.alarm for a in again] == ["saturation"]  # ... and re-arms
    assert len(lines) == 7 and all(line.startswith("smfp: ALERT ") for line in lines)
    written = read_jsonl(tmp_path / "alerts.jsonl")
    assert [(r["step"], r["alarm"]) for r in written] == [(a.step, a.alarm) for a in first + second + again]
    assert json.dumps(written)  # inf is written as a string, so the file stays valid JSON
    assert "saturation x2 (first at step 2)" in mon.summary()
    # a resume from the checkpoint of step 2 keeps the alerts up to step 2 only
    resumed = AlarmMonitor(AlarmConfig(), tmp_path, -2.0, 0.05, True, emit=lines.append, start_step=2)
    assert [r["step"] for r in read_jsonl(tmp_path / "alerts.jsonl")] == [2] * 5 and len(resumed.alerts) == 5


def test_mode_collapse_needs_a_policy_that_had_several_modes_and_a_vanished_entropy_gap(tmp_path):
    mon = AlarmMonitor(AlarmConfig(), tmp_path, -2.0, 0.05, uses_md=False, emit=lambda _: None)
    row = {"train/entropy": 0.0, "train/entropy_m1": 0.0, "health/modes": 1.0}
    assert mon.observe(1, row) == []  # always unimodal (a Gaussian policy): nothing collapsed
    assert mon.observe(2, {**row, "health/modes": 2.0}) == []
    assert mon.observe(3, {**row, "train/entropy": 0.4}) == []  # one mode counted, but the gap says otherwise
    assert [a.alarm for a in mon.observe(4, row)] == ["mode_collapse"]
    assert mon.observe(5, {**row, "train/kl_anchor": 99.0}) == []  # no mirror descent: no KL alarm
    warm = AlarmMonitor(AlarmConfig(), tmp_path, -2.0, 0.05, uses_md=True, emit=lambda _: None, kl_from_step=10)
    assert warm.observe(9, {"train/kl_anchor": 99.0}) == []  # first anchor period: not watched
    assert [a.alarm for a in warm.observe(10, {"train/kl_anchor": 99.0})] == ["kl_too_large"]


def test_mode_collapse_is_one_alert_while_the_gap_oscillates_around_its_threshold(tmp_path):
    mon = AlarmMonitor(AlarmConfig(mode_gap_min=0.05), tmp_path, -2.0, 0.05, uses_md=False, emit=lambda _: None)

    def fired(step: int, modes: float, gap: float) -> bool:
        row = {"train/entropy": gap, "train/entropy_m1": 0.0, "health/modes": modes}
        return [a.alarm for a in mon.observe(step, row)] == ["mode_collapse"]

    assert not fired(1, 2.0, 0.7)
    assert fired(2, 1.0, 0.04)
    assert not any(fired(3 + i, 1.0, gap) for i, gap in enumerate([0.06, 0.04, 0.09, 0.03, 0.1, 0.045]))
    assert not fired(20, 1.0, 0.11)  # clearly above (more than twice the threshold): re-armed ...
    assert fired(21, 1.0, 0.04)  # ... so a new collapse is a new alert
    assert not fired(22, 2.0, 0.04)  # two modes again: re-armed too
    assert fired(23, 1.0, 0.04)
    assert [a.step for a in mon.alerts] == [2, 21, 23]


# --- provoked in real training runs ----------------------------------------------------------------------

def test_a_healthy_short_run_raises_no_alarm(tmp_path):
    cfg = tiny_config(tmp_path / "sac", log_every=100)
    assert _train(cfg) == []
    cfg = tiny_config(tmp_path / "smfp", log_every=100)
    cfg.algo = "smfp"
    cfg.monitor.probe_every = 300
    assert _train(cfg) == []
    rows = read_jsonl(tmp_path / "smfp" / "metrics.jsonl")
    assert any("health/modes" in r for r in rows)  # the probe ran, so mode collapse was watched


def test_rewards_on_a_wild_scale_raise_exploding_gradients(tmp_path, env_module_dir):
    alerts = _train(_one_state(tmp_path / "r", "Huge", 800))
    assert [a["alarm"] for a in alerts] == ["exploding_gradients"], alerts
    assert alerts[0]["value"] > AlarmConfig().grad_norm_max


def test_forced_tiny_output_noise_raises_entropy_collapse(tmp_path):
    cfg = tiny_config(tmp_path / "r", log_every=100)
    cfg.policy.log_std_max = -4.0  # std at most e^-4: the entropy cannot reach its target
    cfg.monitor.entropy_collapse_margin, cfg.monitor.entropy_collapse_window = 1.0, 3
    alerts = _train(cfg)
    assert [a["alarm"] for a in alerts] == ["entropy_collapse"], alerts
    assert alerts[0]["value"] < -1.0 - 1.0 and alerts[0]["step"] >= 200 + 3 * 100


def test_best_action_at_the_bounds_raises_saturation(tmp_path, env_module_dir):
    cfg = _one_state(tmp_path / "r", "Push", 1500)
    cfg.update.alpha, cfg.update.autotune_alpha, cfg.update.actor_lr = 0.01, False, 3e-3
    alerts = _train(cfg)
    assert "saturation" in [a["alarm"] for a in alerts], alerts
    assert next(a for a in alerts if a["alarm"] == "saturation")["value"] > AlarmConfig().saturation_max


def _drift(run_dir, md_lambda: float):
    """mdpo on a task whose best action moves all the time (period 800 steps), with a small buffer so
    that the critic follows it and a low fixed temperature so that the policy is narrow: every move of
    its mean is a KL of many nats unless mirror descent holds the step back."""
    cfg = _one_state(run_dir, "Drift", 1200)
    cfg.algo, cfg.update.md_lambda, cfg.update.anchor_period = "mdpo", md_lambda, 200
    cfg.buffer.buffer_size = 100
    cfg.update.alpha, cfg.update.autotune_alpha = 0.05, False
    cfg.update.actor_lr = cfg.update.critic_lr = 3e-3
    return cfg


def test_a_tiny_mirror_descent_weight_raises_kl_too_large(tmp_path, env_module_dir):
    # lambda = 0.001 alpha: the KL reached 80-480 nats after the first anchor period (limit: 10 x 1 nat
    # per action dimension = 20); with lambda = 10 alpha it stayed below 7
    alerts = _train(_drift(tmp_path / "r", 1e-3))
    assert alerts and {a["alarm"] for a in alerts} == {"kl_too_large"}, alerts
    assert max(a["value"] for a in alerts) > 2 * 10 * 2.0  # lambda per alpha (mdpo's default): 1 nat per dimension
    assert all(a["step"] > 200 + 200 for a in alerts)  # never for the first anchor period (the step from init)
    # a fixed lambda is judged against --target-kl
    cfg = _drift(tmp_path / "fixed", 1e-3)
    cfg.update.lambda_per_alpha, cfg.update.target_kl = False, 0.1
    fixed = _train(cfg)
    assert fixed and {a["alarm"] for a in fixed} == {"kl_too_large"} and fixed[0]["value"] > 10 * 0.1, fixed
    assert all(a["step"] > 400 for a in fixed)
    # the same run with a sensible weight does not
    assert _train(_drift(tmp_path / "ok", 10.0)) == []


def test_the_kl_alarm_watches_no_row_of_the_first_anchor_period(tmp_path):
    """The anchor is first refreshed by the update of step learning_starts + anchor_period, after that
    update: the KL that step logs is still the step away from the initialisation, so it is not watched."""
    cfg = tiny_config(tmp_path / "r", total_steps=600, log_every=100, eval_every=0, checkpoint_every=0)
    cfg.algo, cfg.update.anchor_period = "mdpo", 200
    cfg.log.tensorboard = False
    train(cfg)
    rows = {r["step"]: r for r in read_jsonl(tmp_path / "r" / "metrics.jsonl") if "train/kl_anchor" in r}
    assert rows[300]["train/kl_anchor_at_refresh"] == 0.0  # not refreshed yet
    assert rows[400]["train/kl_anchor"] == rows[400]["train/kl_anchor_at_refresh"] != 0.0  # the first refresh
    assert rows[600]["train/kl_anchor"] == rows[600]["train/kl_anchor_at_refresh"]  # the second
    _, first_watched = kl_watch(cfg.resolved().update, act_dim=1)
    assert 400 < first_watched <= 500


@pytest.mark.slow
def test_two_good_actions_becoming_one_sharp_one_raises_mode_collapse(tmp_path, env_module_dir):
    """The entropy gap (mixture surrogate minus conditional entropy) only vanishes when the component
    means coincide to well within the output noise sigma. With sigma free to shrink, splitting a narrow
    peak between sigma and the spread of the means costs almost nothing, so the gap drifted around
    0.05-0.3 and crossed --mode-gap-min or not depending on rounding. Here sigma is held in
    [e^-2, e^-1]: e^-2 is above the soft-optimal width of the sharp peak, so any spread of the means
    costs reward, and the initial sigma (mid-range) stays as small as with the default bounds. The
    buffer keeps only the last 500 transitions (the switch is complete 500 steps later, not diluted by
    2500 old rewards) and batches of 256 keep the two-peak phase bimodal. On seeds 0-5 the gap stayed
    at 0.7 or more before the switch and fell below 0.05 300-900 steps after it.
    """
    cfg = _one_state(tmp_path / "r", "Switch", 5000, learning_starts=300)
    cfg.algo = "smfp"
    cfg.update.alpha, cfg.update.autotune_alpha = 0.3, False
    cfg.update.md_lambda, cfg.update.anchor_period = 1.0, 100
    cfg.policy.hidden, cfg.update.batch_size = (64, 64), 256
    cfg.policy.log_std_min, cfg.policy.log_std_max = -2.0, -1.0
    cfg.buffer.buffer_size = 500
    cfg.update.actor_lr = cfg.update.critic_lr = 1e-3
    cfg.monitor.probe_every, cfg.monitor.probe_states = 200, 1
    alerts = _train(cfg)
    rows = read_jsonl(tmp_path / "r" / "metrics.jsonl")
    modes = {r["step"]: r["health/modes"] for r in rows if "health/modes" in r}
    assert max(m for s, m in modes.items() if s <= 2500) >= 2, modes  # it was multimodal on the two-peak task
    collapses = [a for a in alerts if a["alarm"] == "mode_collapse"]
    assert collapses and all(a["step"] > 2500 for a in collapses), (alerts, modes)  # only after the switch


def test_injected_non_finite_losses_are_skipped_then_the_last_good_checkpoint_is_restored(tmp_path, env_module_dir,
                                                                                          capfd):
    run = tmp_path / "r"
    cfg = _one_state(run, "Blowup", 1500, checkpoint_every=300)
    cfg.buffer.buffer_size = 100  # the poisoned transitions (steps 501-530) leave the buffer by step 631
    cfg.log.tensorboard = False
    result = train(cfg)
    assert result.step == 1500 and not result.stopped_early and math.isfinite(result.final_eval["return_mean"])
    said = capfd.readouterr()
    assert "non-finite updates in a row at step" in said.out + said.err
    assert "restored the checkpoint of step 300" in said.out + said.err  # the last one before the poison
    rows = read_jsonl(run / "metrics.jsonl")
    recoveries = [r["step"] for r in rows if r.get("train/recoveries")]
    assert recoveries and all(500 < s <= 700 for s in recoveries), recoveries
    assert max(r.get("train/skipped_updates", 0) for r in rows) >= cfg.monitor.max_nonfinite
    assert [a["alarm"] for a in _alarms(run)] == ["nonfinite_updates"]
    # every checkpoint on disk loads (weights only) and holds finite weights; the lr was lowered
    found = list_checkpoints(run)
    assert found and found[-1][0] == 1500
    for step, path in found:
        ckpt = load_checkpoint(path)
        tensors = [t for t in _tensors(ckpt["learner"]) if t.is_floating_point()]
        assert tensors and all(torch.isfinite(t).all() for t in tensors), step
    final = load_weights_only(found[-1][1])
    lrs = [g["lr"] for g in final["learner"]["actor_opt"]["param_groups"]]
    assert all(lr < cfg.update.actor_lr * cfg.monitor.recovery_lr_factor * 1.0001 for lr in lrs), lrs


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def test_report_overlays_runs_and_marks_their_alarms(tmp_path, env_module_dir):
    runs = []
    for name, env in (("huge", "Huge"), ("calm", "Push")):
        cfg = _one_state(tmp_path / name, env, 700)
        _train(cfg)
        runs.append(tmp_path / name)
    out = tmp_path / "report"
    proc = run_cli("report", *runs, "--out", out)
    assert proc.returncode == 0, proc.stderr
    text = (out / "report.md").read_text()
    assert "| huge | sac |" in text and "| calm | sac |" in text
    assert "huge, step" in text and "**exploding_gradients**" in text
    isa = torch.backends.cpu.get_cpu_capability()  # where each run ran, from its starts.jsonl
    assert "- huge: step 0: " in text and f"ISA {isa}, torch {torch.__version__}" in text
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert {"returns.png", "entropy_kl.png", "gradients.png", "q_values.png", "saturation.png"} <= set(pngs)
    for p in out.glob("*.png"):
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert np.all([f"![{p[:-4]}]({p})" in text for p in pngs])


def test_report_writes_a_dash_for_what_a_run_has_not_logged(tmp_path):
    from smfp.config import TrainConfig
    from smfp.monitor.report import write_report

    run = tmp_path / "short"
    run.mkdir()
    cfg = TrainConfig(algo="sac", run_dir=str(run))
    cfg.env.env = "Pendulum-v1"
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))
    (run / "metrics.jsonl").write_text('{"step": 10, "eval/return_mean": -1200.0}\n')  # stopped before an update
    text = write_report([run], tmp_path / "rep").read_text()
    cells = [line for line in text.splitlines() if line.startswith("| short ")][0].split(" | ")
    assert cells[5] == "-1200" and cells[7:10] == ["-", "-", "-"] and "nan" not in text  # sps, entropies: not logged
    assert "- short: not recorded" in text  # no starts.jsonl (made by hand here, or by an older smfp)


def test_an_alarm_whose_metric_never_appears_warns_once(tmp_path):
    """Renaming or dropping a metric must not switch an alarm off silently."""
    from smfp import keys as K
    from smfp.config import AlarmConfig
    from smfp.monitor.alarms import AlarmMonitor

    said = []
    mon = AlarmMonitor(AlarmConfig(), tmp_path, target_entropy=-1.0, target_kl=0.05, uses_md=True,
                       emit=said.append)
    row = {K.LOSS_CRITIC: 1.0, K.ENTROPY: 0.0, K.ENTROPY_M1: 0.0, K.GRAD_NORM_ACTOR: 1.0,
           K.GRAD_NORM_CRITIC: 1.0, K.SKIPPED_UPDATES: 0.0, K.SPS: 100.0}  # no saturation, no KL
    for step in range(1, 8):
        mon.observe(step * 100, dict(row))
    warnings = [s for s in said if "WARNING" in s]
    assert len(warnings) == 2, said
    assert any("saturation" in w and K.SATURATION in w for w in warnings)
    assert any("kl_too_large" in w and K.KL_ANCHOR in w for w in warnings)
    said.clear()
    full = AlarmMonitor(AlarmConfig(), tmp_path / "b", target_entropy=-1.0, target_kl=0.05, uses_md=True,
                        emit=said.append)
    for step in range(1, 8):
        full.observe(step * 100, {**row, K.SATURATION: 0.0, K.KL_ANCHOR: 0.01})
    assert not said
