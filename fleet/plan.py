"""What one host must do to converge one model: the daemon steps, in a safe
order (pure; :mod:`fleet.reconciler` runs them).

    plan(desired, Actual(("1",), {}))
    -> [("split", {"1": 100}), ("load", "2"), ("split", {"1": 90, "2": 10}), ("unload", "3")]

Order, so that traffic never reaches a version before the desired split sends
it there and never loses the version it is on:

1. the desired split at once when every version it names is loaded (traffic
   leaves versions about to be unloaded); else, when the host runs no split and
   a version is to be loaded, a pin to the version answering now (a daemon
   with no split answers with its highest version, which the new one may be);
2. loads (the daemon builds and warms each version before it can be chosen);
3. the desired split, if step 1 could not set it;
4. unloads (nothing routes to them any more).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fleet.state import ModelState, by_number

Step = tuple[str, Any]  # ("load", "2") | ("unload", "3") | ("split", {"1": 90, "2": 10})


@dataclass(frozen=True)
class Actual:
    """What a host's daemon runs of one model (its ``models`` op)."""

    versions: tuple[str, ...]
    split: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {"versions": list(self.versions), "split": dict(self.split)}

    @classmethod
    def from_json(cls, doc: Any) -> Actual:
        return cls(by_number(doc.get("versions", ())),
                   {str(k): int(v) for k, v in (doc.get("split") or {}).items()})


def plan(desired: ModelState, actual: Actual | None) -> list[Step]:
    loaded = set(actual.versions) if actual else set()
    split = dict(actual.split) if actual else {}
    target = dict(desired.split)
    missing = [v for v in desired.versions if v not in loaded]
    extra = [v for v in by_number(loaded) if v not in desired.versions]
    steps: list[Step] = []
    if split != target and all(v in loaded for v in target):
        steps.append(("split", target))
        split = target
    elif missing and loaded and not split:
        pin = {by_number(loaded)[-1]: 100}
        steps.append(("split", pin))
        split = pin
    steps += [("load", v) for v in missing]
    if split != target:
        steps.append(("split", target))
    steps += [("unload", v) for v in extra]
    return steps


def converged(desired: ModelState, actual: Actual | None) -> bool:
    return actual is not None and set(actual.versions) == set(desired.versions) \
        and actual.split == desired.split
