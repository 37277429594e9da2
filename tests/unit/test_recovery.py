"""The crash-recovery decision for each phase a run can die in (pure logic)."""

from __future__ import annotations

import pytest

from zdagent.recovery import RecoveryPlan, recovery_plan
from zdagent.store import FRESH, STANDBY, Phase


@pytest.mark.parametrize("phase", [Phase.PRE_DEPLOY, Phase.SOURCE, Phase.RELEASE, Phase.START,
                                   Phase.PROBE, Phase.SMOKE])
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


@pytest.mark.parametrize("phase", [Phase.START, Phase.PROBE, Phase.SWITCH])
def test_a_rollback_never_removes_the_standby_it_restarted(phase):
    """The rollback's candidate is the previous version: undoing it must keep it."""
    assert recovery_plan(phase, "green", "blue", "blue", True, STANDBY) == RecoveryPlan(
        "blue", None)


def test_a_rollback_that_reached_the_drain_keeps_the_old_live_as_standby():
    assert recovery_plan(Phase.DRAIN, "green", "blue", "green", True, STANDBY) == RecoveryPlan(
        "green", None)


def test_a_rollback_whose_file_names_an_unhealthy_standby_goes_back_and_keeps_it():
    assert recovery_plan(Phase.SWITCH, "green", "blue", "green", False, STANDBY) == \
        RecoveryPlan("blue", None)


@pytest.mark.parametrize("phase", [Phase.PRE_DEPLOY, Phase.SOURCE, Phase.RELEASE, Phase.START])
def test_a_slot_the_run_had_not_filled_yet_still_holds_the_standby(phase):
    """Died before its container existed: what stands in the slot is the old standby."""
    assert recovery_plan(phase, "green", "blue", "blue", True, FRESH,
                         candidate_created=False) == RecoveryPlan("blue", None)
