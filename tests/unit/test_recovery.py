"""The crash-recovery decision for each phase a run can die in (pure logic)."""

from __future__ import annotations

import pytest

from zdagent.deploy import Phase, RecoveryPlan, recovery_plan


@pytest.mark.parametrize("phase", [Phase.SOURCE, Phase.START, Phase.PROBE])
def test_before_switch_keeps_live_and_drops_candidate(phase):
    assert recovery_plan(phase, "green", "blue", "blue", True) == RecoveryPlan("blue", "green")


def test_first_deploy_dying_before_switch_leaves_nothing_live():
    assert recovery_plan(Phase.PROBE, "blue", None, None, False) == RecoveryPlan(None, "blue")


def test_switch_keeps_a_healthy_new_slot_named_by_the_file():
    assert recovery_plan(Phase.SWITCH, "green", "blue", "green", True) == RecoveryPlan(
        "green", None)


def test_switch_goes_back_when_the_new_slot_is_unhealthy():
    assert recovery_plan(Phase.SWITCH, "green", "blue", "green", False) == RecoveryPlan(
        "blue", "green")


def test_switch_not_yet_written_keeps_old():
    assert recovery_plan(Phase.SWITCH, "green", "blue", "blue", True) == RecoveryPlan(
        "blue", "green")


def test_drain_means_the_switch_was_verified():
    assert recovery_plan(Phase.DRAIN, "green", "blue", "green", True) == RecoveryPlan(
        "green", None)
