"""edge.core.choose: a traffic split's sticky, weighted choice of version."""

from __future__ import annotations

from collections import Counter

from edge.core import choose


def test_weights_are_respected_over_many_keys() -> None:
    counts = Counter(choose({"1": 80, "2": 20}, f"model\0caller-{i}") for i in range(20000))
    assert abs(counts["2"] / 20000 - 0.20) < 0.015


def test_a_key_always_gets_the_same_version() -> None:
    split = {"1": 50, "2": 50}
    assert len({choose(split, "model\0alice") for _ in range(100)}) == 1


def test_zero_weight_versions_never_answer() -> None:
    assert {choose({"1": 0, "2": 7, "3": 0}, f"k{i}") for i in range(500)} == {"2"}


def test_order_of_the_map_does_not_matter() -> None:
    a, b = {"1": 30, "10": 70}, {"10": 70, "1": 30}
    assert all(choose(a, f"k{i}") == choose(b, f"k{i}") for i in range(500))
