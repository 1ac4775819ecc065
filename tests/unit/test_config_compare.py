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
