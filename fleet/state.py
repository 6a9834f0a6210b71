"""The fleet's desired state of one model, and how each change transforms it
(pure: no SQL, no sockets; :mod:`fleet.store` persists it, :mod:`fleet.plan`
turns it into daemon steps).

    st = ModelState(("1",), {"1": 100}, origin=4)
    st2 = with_version(st, "2", revision=9)        # versions 1, 2; split still {"1": 100}
    st3 = with_split(st2, {"1": 90, "2": 10}, 10)  # origin 10
    without_version(st3, "2", 11)                  # CarriesTraffic: change the split first

A managed model always has a split naming at least one loaded version with a
positive weight, so that no version receives traffic unless a split says so: a
version loaded into a model whose hosts run no split pins the split to the
version that answered until then (a daemon with no split sends everything to
its highest version, which a new version would become).

``origin`` is the revision whose split write made the current split; a
rollback restores the split as it was just before ``origin`` (and that split's
own origin), so rollbacks step back one write at a time, and a rollback
``--to-revision N`` names its target absolutely (a retry changes nothing).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from fleet.errors import CarriesTraffic, InvalidChange

VERSION_RE = re.compile(r"^[1-9][0-9]{0,17}$")  # a repository version directory
MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # daemon/repository.py NAME_RE


def check_model(model: str) -> str:
    if not isinstance(model, str) or not MODEL_RE.match(model):
        raise InvalidChange(f"model {model!r}: expected letters, digits, '.', '_', '-' "
                            "(at most 64)", "model")
    return model


def check_version(version: Any) -> str:
    text = str(version)
    if not VERSION_RE.match(text):
        raise InvalidChange(f"version {version!r}: expected a positive integer", "version")
    return text


def by_number(versions: Any) -> tuple[str, ...]:
    return tuple(sorted({str(v) for v in versions}, key=int))


@dataclass(frozen=True)
class ModelState:
    """One model's desired state: the versions every host loads, the split."""

    versions: tuple[str, ...]
    split: dict[str, int]
    origin: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"versions": list(self.versions), "split": dict(self.split)}

    @classmethod
    def from_row(cls, versions: Any, split: Any, origin: int) -> ModelState:
        return cls(by_number(versions), {str(k): int(v) for k, v in dict(split).items()},
                   int(origin))

    def carries(self, version: str) -> bool:
        return self.split.get(version, 0) > 0


def check_split(split: Any, versions: tuple[str, ...]) -> dict[str, int]:
    """``split`` as ``{version: weight}`` over desired ``versions``; raises
    :class:`InvalidChange` naming the field."""
    if not isinstance(split, dict) or not split:
        raise InvalidChange("expected VERSION=WEIGHT pairs, e.g. 1=90 2=10", "split")
    out: dict[str, int] = {}
    for version, weight in split.items():
        v = check_version(version)
        if v not in versions:
            raise InvalidChange(f"version {v} is not in the fleet's desired state (desired: "
                                f"{', '.join(versions) or 'none'}): `falconctl hosts load` it "
                                "first", "split")
        if type(weight) is not int or weight < 0:
            raise InvalidChange(f"weight of version {v} must be a non-negative integer, "
                                f"got {weight!r}", "split")
        out[v] = weight
    if sum(out.values()) <= 0:
        raise InvalidChange("the weights add up to 0", "split")
    return out


def seeded(actual_versions: list[tuple[str, ...]], actual_splits: list[dict[str, int]],
           revision: int, hosts: list[str] | None = None,
           explicit_split: bool = False) -> ModelState | None:
    """The state a model not managed yet starts from: the versions any host
    reports loaded, and the routing they all have (a host's split, or, with
    none, its highest version: what its daemon answers with). None when no host
    reports the model. When the hosts route it differently no split is right
    for all of them: :class:`SplitDisagreement` naming them, unless the change
    sets the split itself (``explicit_split``: the seed's split is then empty).
    ``hosts`` names the reports, for that message."""
    versions = by_number(v for vs in actual_versions for v in vs)
    if not versions:
        return None
    names = hosts or [f"host {i + 1}" for i in range(len(actual_versions))]
    routes: dict[tuple[tuple[str, int], ...], list[str]] = {}
    for name, vs, split in zip(names, actual_versions, actual_splits, strict=True):
        route = dict(split) if sum(split.values()) > 0 else {}
        if not route and vs:
            route = {by_number(vs)[-1]: 100}
        routes.setdefault(tuple(sorted(route.items())), []).append(name)
    if len(routes) == 1:
        return ModelState(versions, dict(next(iter(routes))), revision)
    if explicit_split:
        return ModelState(versions, {}, revision)
    from fleet.errors import SplitDisagreement

    seen = "; ".join(f"{', '.join(sorted(h))} route {dict(r) or 'nothing'}"
                     for r, h in sorted(routes.items(), key=lambda kv: sorted(kv[1])))
    raise SplitDisagreement(f"the hosts route this model differently ({seen}): a first "
                            "write would move traffic on some of them; set one split first "
                            "(`falconctl hosts split MODEL VERSION=WEIGHT ...`)")


def with_version(state: ModelState | None, version: str, revision: int) -> ModelState:
    """``version`` added. A model new to the fleet gets the split ``{version: 100}``."""
    version = check_version(version)
    if state is None:
        return ModelState((version,), {version: 100}, revision)
    return ModelState(by_number((*state.versions, version)), dict(state.split), state.origin)


def without_version(state: ModelState, version: str, revision: int) -> ModelState:
    """``version`` removed; raises :class:`CarriesTraffic` if the split gives it weight."""
    version = check_version(version)
    if state.carries(version):
        raise CarriesTraffic(f"version {version} carries {state.split[version]} of the "
                             f"desired split {state.split}: change the split first "
                             "(`falconctl hosts split`)")
    split = {v: w for v, w in state.split.items() if v != version}
    return ModelState(tuple(v for v in state.versions if v != version), split, state.origin)


def with_split(state: ModelState, split: Any, revision: int) -> ModelState:
    return ModelState(state.versions, check_split(split, state.versions), revision)


def rollback_target(history: list[tuple[int, ModelState]], current: ModelState,
                    to_revision: int | None) -> tuple[int, ModelState]:
    """Which revision's split a rollback restores, and that split (with its
    origin). ``history``: the model's ``(revision, new state)`` pairs in
    increasing revision. Without ``to_revision``: the split just before the
    write that made the current one."""
    from fleet.errors import NothingToRollBack

    if to_revision is None:
        earlier = [(r, s) for r, s in history if r < current.origin]
        if not earlier:
            raise NothingToRollBack(f"no split of this model before revision {current.origin}, "
                                    "which made the current one: nothing to roll back to")
        revision, state = earlier[-1]
    else:
        upto = [(r, s) for r, s in history if r <= to_revision]
        if not upto:
            raise NothingToRollBack(f"the model had no desired state at revision {to_revision}")
        revision, state = upto[-1]
        revision = to_revision
    gone = [v for v, w in state.split.items() if w > 0 and v not in current.versions]
    if gone:
        raise NothingToRollBack(f"revision {revision}'s split {state.split} needs version(s) "
                                f"{', '.join(gone)}, unloaded since: `falconctl hosts load` "
                                "them first")
    return revision, ModelState(current.versions,
                                {v: w for v, w in state.split.items() if v in current.versions},
                                state.origin)
