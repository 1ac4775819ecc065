"""Which saved-config differences stop a resume or a continued sweep (``smfp.config.changed_fields``)."""

from __future__ import annotations

import dataclasses

from smfp.config import TrainConfig, changed_fields, flatten_config


def _saved(cfg: TrainConfig) -> dict:
    return flatten_config(cfg.to_dict())


def _with_update(cfg: TrainConfig, **changes) -> TrainConfig:
    return dataclasses.replace(cfg, update=dataclasses.replace(cfg.update, **changes))


def test_a_method_field_that_differs_is_reported():
    cfg = TrainConfig(algo="smfp")
    assert changed_fields(_saved(cfg), cfg) == []
    assert changed_fields(_saved(_with_update(cfg, tau=0.01)), cfg) == ["update.tau"]


def test_fit_settings_are_inert_when_both_runs_use_the_reparameterised_update():
    cfg = TrainConfig(algo="sac")
    saved = _saved(_with_update(cfg, fit_loss="energy", fit_coef=3.0, hybrid_coef=0.5))
    assert changed_fields(saved, cfg) == []


def test_fit_settings_count_when_either_run_fits():
    cfg = _with_update(TrainConfig(algo="smfp"), actor_update="hybrid")
    saved = _saved(_with_update(cfg, fit_loss="energy"))
    assert changed_fields(saved, cfg) == ["update.fit_loss"]
    saved_reparam = _saved(_with_update(cfg, actor_update="reparam", fit_loss="energy"))
    assert changed_fields(saved_reparam, cfg) == ["update.actor_update", "update.fit_loss"]


def test_every_field_added_since_the_first_saved_runs_has_its_old_value():
    """A field added to ``TrainConfig`` must be in ``ADDED_FIELDS`` (with the value that reproduces what older runs did):
    otherwise every run saved before it "differs" from itself and cannot be resumed or continued by a sweep (what
    ``--log-std-squash`` and ``--squash-log-det-eps`` did to the runs started before them, until they were listed). A
    field removed would do the same."""
    from pathlib import Path

    from smfp.config import ADDED_FIELDS

    listed = Path(__file__).with_name("config_fields_before_added.txt").read_text().splitlines()
    first = {line for line in listed if line and not line.startswith("#")}
    now = set(_saved(TrainConfig()))
    assert now - set(ADDED_FIELDS) == first, sorted((now - set(ADDED_FIELDS)) ^ first)
    assert set(ADDED_FIELDS) <= now, sorted(set(ADDED_FIELDS) - now)


def test_a_run_saved_before_the_log_std_switches_resumes_with_the_defaults():
    cfg = TrainConfig(algo="sac")
    saved = {k: v for k, v in _saved(cfg).items() if k not in ("policy.log_std_squash", "policy.squash_log_det_eps")}
    assert changed_fields(saved, cfg) == []
    clip = dataclasses.replace(cfg, policy=dataclasses.replace(cfg.policy, log_std_squash="clip"))
    assert changed_fields(saved, clip) == ["policy.log_std_squash"]
