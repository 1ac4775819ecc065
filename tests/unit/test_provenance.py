"""``smfp.provenance.machine``: what a run records about the machine that computed it."""

from __future__ import annotations

import torch

from smfp import provenance
from smfp.provenance import SAME_NUMBERS, machine, machine_changes


def test_machine_names_the_isa_torch_dispatches_to_and_the_versions_that_change_the_numbers():
    info = machine()
    assert info["isa"] == torch.backends.cpu.get_cpu_capability() and info["torch"] == torch.__version__
    assert set(SAME_NUMBERS) <= set(info) and info["mujoco"] and info["gymnasium"] and info["numpy"]
    assert info["cpu"] and info["host"] and info["cpu_count"] >= 1


def test_machine_tells_cpu_generations_apart_by_family_and_model(monkeypatch):
    """Zen 3 and Zen 4 EPYCs can both call themselves "AMD EPYC"; their family and model numbers differ."""
    for model in ("1", "17"):
        fields = {"vendor_id": "AuthenticAMD", "cpu family": "25", "model": model, "model name": "AMD EPYC"}
        monkeypatch.setattr(provenance, "cpuinfo", lambda fields=fields: fields)
        assert machine()["cpu_id"] == f"vendor AuthenticAMD family 25 model {model}"
    monkeypatch.setattr(provenance, "cpuinfo", lambda: {})  # no /proc/cpuinfo: still a description
    assert machine()["cpu_id"] == provenance.UNKNOWN and machine()["cpu"]


def test_machine_changes_lists_the_fields_that_differ_and_nothing_else():
    before = machine()
    assert machine_changes(before, dict(before)) == []
    after = {**before, "isa": "AVX512", "host": "elsewhere"}  # the host alone does not change the numbers
    assert machine_changes(before, after) == [f"isa {before['isa']} -> AVX512"]
    assert machine_changes({"threads": 1}, {"threads": 2}, ("threads",)) == ["threads 1 -> 2"]
