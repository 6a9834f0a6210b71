"""fleet.state (each change's new desired state) and fleet.plan (the daemon
steps that converge one host), without PostgreSQL or a daemon."""

from __future__ import annotations

import pytest

from fleet.errors import CarriesTraffic, InvalidChange, NothingToRollBack, SplitDisagreement
from fleet.plan import Actual, converged, plan
from fleet.state import (
    ModelState,
    rollback_target,
    seeded,
    with_split,
    with_version,
    without_version,
)


def test_a_new_version_gets_no_traffic_until_a_split_names_it() -> None:
    st = with_version(None, "1", revision=1)
    assert st == ModelState(("1",), {"1": 100}, 1)
    st2 = with_version(st, "2", revision=2)
    assert st2.versions == ("1", "2") and st2.split == {"1": 100} and st2.origin == 1
    st3 = with_split(st2, {"1": 90, "2": 10}, 3)
    assert st3.split == {"1": 90, "2": 10} and st3.origin == 3


def test_versions_sort_as_numbers_and_bad_ones_name_the_field() -> None:
    assert with_version(ModelState(("9",), {"9": 1}), "10", 2).versions == ("9", "10")
    for bad in ("0", "x", "1.5", "", "-1"):
        with pytest.raises(InvalidChange) as err:
            with_version(None, bad, 1)
        assert err.value.field == "version"


def test_a_split_must_name_desired_versions_with_positive_total() -> None:
    st = ModelState(("1", "2"), {"1": 100})
    for bad, why in (({"3": 100}, "not in the fleet"), ({"1": 0}, "add up to 0"),
                     ({"1": -1}, "non-negative"), ({"1": 1.5}, "non-negative"), ({}, "expected")):
        with pytest.raises(InvalidChange, match=why) as err:
            with_split(st, bad, 2)
        assert err.value.field == "split"


def test_unloading_a_version_with_weight_is_refused() -> None:
    st = ModelState(("1", "2"), {"1": 90, "2": 10}, 3)
    with pytest.raises(CarriesTraffic, match="carries 10"):
        without_version(st, "2", 4)
    st = with_split(st, {"1": 100, "2": 0}, 4)
    assert without_version(st, "2", 5) == ModelState(("1",), {"1": 100}, 4)


def test_a_model_new_to_the_fleet_starts_as_the_hosts_run_it() -> None:
    # the hosts agree on a split: kept; they run none: their highest version (the daemon's
    # default) is pinned, so that a version loaded next takes no traffic
    assert seeded([("1", "2"), ("1", "2")], [{"1": 50, "2": 50}] * 2, 7) == \
        ModelState(("1", "2"), {"1": 50, "2": 50}, 7)
    assert seeded([("1", "2"), ("1", "2")], [{}, {}], 7) == ModelState(("1", "2"), {"2": 100}, 7)
    # one runs no split and answers with 1, the other pins 1: they agree on {1: 100}
    assert seeded([("1",), ("1", "2")], [{}, {"1": 100}], 7).split == {"1": 100}
    assert seeded([], [], 7) is None


def test_hosts_routing_a_joining_model_differently_refuse_a_seeded_split() -> None:
    # before: {highest: 100} was seeded, moving host-a's traffic from 1 to 2
    with pytest.raises(SplitDisagreement) as err:
        seeded([("1", "2"), ("1", "2")], [{"1": 100}, {}], 7, ["host-a", "host-b"])
    assert err.value.field == "split"
    assert "host-a route {'1': 100}; host-b route {'2': 100}" in str(err.value)
    assert "hosts split" in str(err.value)
    # no split and different highest versions disagree too
    with pytest.raises(SplitDisagreement):
        seeded([("1",), ("1", "2")], [{}, {}], 7, ["host-a", "host-b"])
    # a change that sets the split itself may seed from them (with no split of its own)
    assert seeded([("1",), ("1", "2")], [{}, {}], 7, explicit_split=True) == \
        ModelState(("1", "2"), {}, 7)


def test_rollback_steps_back_one_split_write_at_a_time() -> None:
    history = [(1, ModelState(("1",), {"1": 100}, 1)),
               (2, ModelState(("1", "2"), {"1": 100}, 1)),        # load: split unchanged
               (3, ModelState(("1", "2"), {"1": 90, "2": 10}, 3)),
               (4, ModelState(("1", "2"), {"1": 50, "2": 50}, 4))]
    current = history[-1][1]
    target, back = rollback_target(history, current, None)
    assert (target, back) == (3, ModelState(("1", "2"), {"1": 90, "2": 10}, 3))
    history.append((5, back))
    target, back2 = rollback_target(history, back, None)
    assert (target, back2.split, back2.origin) == (2, {"1": 100}, 1)
    history.append((6, back2))
    with pytest.raises(NothingToRollBack):
        rollback_target(history, back2, None)
    # absolute: the split as of revision 3, whatever happened since (a retry is a no-op)
    assert rollback_target(history, back2, 3)[1] == back
    assert rollback_target(history, back, 3)[1] == back


def test_rollback_to_a_split_naming_an_unloaded_version_is_refused() -> None:
    history = [(1, ModelState(("1", "2"), {"2": 100}, 1)),
               (2, ModelState(("1", "2"), {"1": 100}, 2)),
               (3, ModelState(("1",), {"1": 100}, 2))]
    with pytest.raises(NothingToRollBack, match="unloaded since"):
        rollback_target(history, history[-1][1], None)


def test_plan_loads_before_routing_and_unloads_last() -> None:
    want = ModelState(("1", "2"), {"1": 90, "2": 10})
    # no split on the host: pin the version answering now, load, then route
    assert plan(want, Actual(("1",), {})) == [
        ("split", {"1": 100}), ("load", "2"), ("split", {"1": 90, "2": 10})]
    # a split already: loading does not change routing
    assert plan(want, Actual(("1",), {"1": 100})) == [("load", "2"),
                                                      ("split", {"1": 90, "2": 10})]
    # route away first, then unload
    want = ModelState(("2",), {"2": 100})
    assert plan(want, Actual(("1", "2"), {"1": 50, "2": 50})) == [
        ("split", {"2": 100}), ("unload", "1")]
    # a host that has nothing (daemon freshly started without the model)
    assert plan(want, None) == [("load", "2"), ("split", {"2": 100})]
    assert plan(want, Actual(("2",), {"2": 100})) == []
    assert converged(want, Actual(("2",), {"2": 100}))
    assert not converged(want, Actual(("2",), {})) and not converged(want, None)
