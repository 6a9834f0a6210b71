"""The fleet's errors: one root, :class:`FleetError`, a subclass per cause.

``falconctl hosts`` prints them as one line with its exit status (the
``*_EXIT`` constants below, docs/several-hosts.md); the reconciler logs each
kind once and tries again.
"""

from __future__ import annotations


class FleetError(Exception):
    """Root of the fleet's errors."""


class InvalidChange(FleetError):
    """A requested change is malformed or impossible (bad version, split that
    does not add up, a version not in the desired state). ``field`` names the
    part at fault; nothing was written."""

    def __init__(self, message: str, field: str = "model") -> None:
        super().__init__(message)
        self.field = field


class CarriesTraffic(InvalidChange):
    """An unload of a version that carries traffic: the desired split gives it
    weight, or a live host has not converged away from it yet. Likely cause: the
    split was not changed first, or was changed a moment ago; nothing was written."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "version")


class NothingToRollBack(InvalidChange):
    """A rollback with no earlier split of the model (or one naming a version
    unloaded since); nothing was written."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "revision")


class StaleRevision(FleetError):
    """The write's precondition (``--if-revision``) failed: another writer
    changed the fleet state first. Read it again (``falconctl hosts status``)
    and decide; nothing was written."""


class FleetUnavailable(FleetError):
    """PostgreSQL cannot be reached (or the connection broke mid-call): a write
    was not committed unless the message says otherwise. Hosts keep serving
    their last state."""


class DatabaseError(FleetError):
    """PostgreSQL answered with an error that is not a lost connection: a
    missing privilege, a read-only transaction (a standby, e.g. after a
    failover), a constraint. ``pgcode`` is PostgreSQL's SQLSTATE (or "");
    nothing was written."""

    def __init__(self, message: str, pgcode: str = "") -> None:
        super().__init__(message)
        self.pgcode = pgcode


class SchemaNotCurrent(FleetError):
    """The database lacks migrations this code needs (audit/migrations) and
    this role may not apply them (no CREATE: a least-privilege role). Run any
    ``falconctl hosts`` command (or the shipper) once with a role that may."""


class SplitDisagreement(InvalidChange):
    """A model joining the fleet whose hosts route it differently (different
    splits, or no split and different highest versions): seeding one split
    would move traffic on some host. Set one explicitly first
    (``falconctl hosts split``); nothing was written."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "split")


class DaemonUnavailable(FleetError):
    """The local daemon's socket does not answer (stopped, restarting). The
    reconciler reports it and tries again."""


class DaemonRefused(FleetError):
    """The daemon refused a step (e.g. a version whose files are not in this
    host's repository); the message is the daemon's."""


# ``falconctl hosts`` exit statuses (docs/several-hosts.md); 2 is a configuration error
REFUSED_EXIT = 1        # nothing written: the change was refused, or a database error
STALE_EXIT = 3          # the --if-revision precondition failed; nothing written
UNREACHABLE_EXIT = 4    # PostgreSQL unreachable
NOT_CONVERGED_EXIT = 5  # status, or a write's --wait: some host has not converged (yet)
