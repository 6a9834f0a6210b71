"""Group commit: many appenders, one sync for all of them, each told when its bytes are
durable. What ``audit/writer.py`` runs its sync policies on.

Usage (the owner, e.g. the WAL writer, appends under its own lock, ``cond``)::

    commit = GroupCommit(cond, point=lambda: (fd, offset), sync=lambda p: fdatasync(p[0]),
                         durable=..., stop=..., before_sync=..., name=stream)
    with cond:
        commit.check()                          # WalFailed once the stream failed
        os.write(fd, frame)
        ticket = commit.appended(len(frame))
        commit.sync_locked()                    # policy "always": sync now, under the lock
    commit.wait(ticket)                         # policy "batch": return once durable
    commit.lead()                               # policy "interval": a timer thread, no lock

The protocol:

- A *ticket* is the count of bytes appended so far (:meth:`appended`); ``synced`` is
  the ticket up to which a sync has completed. A sync started when ``written`` was W
  covers every ticket up to W.
- :meth:`wait` (without the lock): returns at once if its ticket is covered, raises
  :class:`~audit.segment.WalFailed` if the stream failed. Else, if no sync is in
  flight, the caller becomes the *leader*: it claims the sync (``syncing``), runs
  ``before_sync`` and ``sync`` without the lock, then settles under it. Else it queues
  and sleeps on a lock of its own.
- Settling hands each queued waiter its outcome: *done* if the sync covered its
  ticket, *failed* if the stream failed; of the rest, the first is told to *lead* the
  next sync and the others sleep on. PERF: only the waiters whose outcome is known
  wake, and none of them takes the owner's lock again (with one Condition and
  ``notify_all`` each woke and queued for the lock only to sleep again:
  ``bench/wal_append.py``, bench/RESULTS.md).
- ``before_sync`` runs in the leader before it takes the point its sync covers: under
  gevent a yield (``edge/app.py`` ``greenlet_yield``), so that the greenlets woken
  with it (the other answers of one daemon batch) append first and share its sync.
- A sync that raises ``OSError`` fails the stream for good (:meth:`fail`): every
  waiter, covered or not, and every later call get WalFailed; ``stop`` (the owner
  closes its file) runs once, as soon as no sync is in flight. Never retried: after a
  failed fsync the kernel may have dropped the dirty pages, and a retry could report
  success for data that is gone (PostgreSQL's fsync lesson).
- A sync or ``before_sync`` that raises anything else (a greenlet killed, a
  KeyboardInterrupt) makes nothing durable and fails nothing: the leader raises it and
  the first uncovered waiter leads the next sync.
- An interrupted waiter (an exception while it sleeps) leaves the queue; if it had
  just been told to lead, it passes the lead on, so nobody waits for a leader that is
  gone.

The owner keeps its file while a sync is in flight (``syncing``): it must not close or
replace what ``point`` returned (the WAL writer's roll and close wait, with
``cond.wait()``: settling notifies ``cond``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from audit.segment import WalFailed

P = TypeVar("P")

_DONE, _FAILED, _LEAD = "done", "failed", "lead"


def _nothing(*args: Any) -> None:
    return None


class GroupCommit(Generic[P]):
    """One stream's group commit over its owner's lock ``cond``.

    ``point()`` (lock held) says what a sync started now would cover (the WAL: its fd
    and offset); ``sync(point)`` (lock not held, or held by :meth:`sync_locked`) makes
    it durable and raises OSError on failure; ``durable(point)`` (lock held) is told
    after each successful sync; ``stop()`` (lock held) is called once after a failure,
    when no sync is in flight. ``lock_factory`` makes each waiter's lock (a seam for
    tests; default ``threading.Lock``). Thread-safe, and greenlet-safe under gevent.

    NOTE: the default lock is looked up at each wait, not bound when this module is
    imported: gunicorn imports the app before its gevent worker patches ``threading``,
    and a waiter on an unpatched lock would block every greenlet of the worker.
    """

    def __init__(self, cond: threading.Condition, *, point: Callable[[], P],
                 sync: Callable[[P], None], durable: Callable[[P], None] = _nothing,
                 stop: Callable[[], None] = _nothing,
                 before_sync: Callable[[], None] | None = None, name: str = "",
                 lock_factory: Callable[[], Any] | None = None) -> None:
        self.cond = cond
        self._point, self._sync, self._durable, self._stop = point, sync, durable, stop
        self._before_sync = before_sync
        self.name = name
        self._lock_factory = lock_factory
        self.written = 0       # tickets handed out: bytes appended
        self.synced = 0        # bytes a completed sync covered
        self.syncing = False   # a leader's sync is in flight (outside the lock)
        self.failed: BaseException | None = None
        self._stopped = False
        self._waiters: list[_Waiter] = []

    @property
    def waiting(self) -> int:
        """How many appenders sleep until a sync covers them."""
        return len(self._waiters)

    # --- with the lock held -----------------------------------------------------------

    def check(self) -> None:
        """Raise WalFailed if the stream failed (lock held)."""
        if self.failed is not None:
            raise WalFailed(f"WAL stream {self.name!r} failed earlier: {self.failed}")

    def appended(self, size: int) -> int:
        """Count ``size`` appended bytes (lock held); the ticket to wait for."""
        self.written += size
        return self.written

    def sync_locked(self) -> None:
        """Sync everything appended, now, under the lock (policy ``always``, and the
        owner's roll and close); requires that no sync is in flight. Raises WalFailed
        (the stream has failed) if the sync raises OSError."""
        point = self._point()
        try:
            self._sync(point)
        except OSError as exc:
            raise self.fail(exc) from exc
        self.synced = self.written
        self._durable(point)
        self._wake()

    def fail(self, exc: BaseException) -> WalFailed:
        """Fail the stream for good (lock held): the owner's write failed, or a sync.
        Wakes every waiter (failed) and stops the owner unless a sync is in flight (its
        leader stops it when the sync ends). Returns the error to raise."""
        if self.failed is None:
            self.failed = exc
        if not self.syncing:
            self._stop_once()
            self._wake()
        self.cond.notify_all()
        return WalFailed(f"WAL stream {self.name!r} failed ({exc}); the writer has stopped")

    # --- without the lock -------------------------------------------------------------

    def wait(self, ticket: int) -> None:
        """Return once a sync covered ``ticket`` (policy ``batch``): lead one or wait for
        one. Raises WalFailed if the stream failed, or whatever interrupted it (then it
        has left the queue and passed on a lead it was given)."""
        while True:
            waiter = _Waiter(ticket, (self._lock_factory or threading.Lock)())
            try:
                with self.cond:
                    if self.synced >= ticket:
                        return
                    if self.failed is not None:
                        raise WalFailed(f"WAL stream {self.name!r} failed: {self.failed}")
                    claim = None if self.syncing else self._claim()
                    if claim is None:
                        self._waiters.append(waiter)
                if claim is not None:
                    self._run(*claim)
                    continue  # the loop finds the ticket covered (or the stream failed)
                waiter.lock.acquire()  # released by _wake with the outcome
            except BaseException:
                with self.cond:
                    if waiter in self._waiters:
                        self._waiters.remove(waiter)
                    elif waiter.role == _LEAD and not self.syncing:
                        self._wake()  # the lead it was given goes to the next waiter
                raise
            if waiter.role == _DONE:
                return
            if waiter.role == _FAILED:
                raise WalFailed(f"WAL stream {self.name!r} failed: {self.failed}")
            # _LEAD: the sync that ended did not cover this ticket; lead the next one

    def lead(self) -> bool:
        """Sync what was appended if nothing is in flight and something is unsynced
        (policy ``interval``, from a timer thread); whether it did. Raises WalFailed if
        that sync fails."""
        with self.cond:
            if self.failed is not None or self.syncing or self.synced >= self.written:
                return False
            point, target = self._claim()
        self._run(point, target)
        return True

    # --- the leader's steps -----------------------------------------------------------

    def _claim(self) -> tuple[P, int]:
        self.syncing = True
        return self._point(), self.written

    def _run(self, point: P, target: int) -> None:
        """The claimed sync, outside the lock; then settle under it."""
        error: OSError | None = None
        failure: WalFailed | None = None
        done = False
        try:
            if self._before_sync is not None:
                self._before_sync()
                with self.cond:  # take in what was appended meanwhile
                    point, target = self._point(), self.written
            self._sync(point)
            done = True
        except OSError as exc:
            error = exc
        finally:  # also for what is not an OSError: then nothing is durable, nothing failed
            with self.cond:
                self.syncing = False
                if done:
                    self.synced = max(self.synced, target)
                    self._durable(point)
                if error is not None:
                    failure = self.fail(error)
                else:
                    if self.failed is not None:  # the owner failed meanwhile: stop it now
                        self._stop_once()
                    self._wake()
                    self.cond.notify_all()  # the owner's roll and close wait for the sync
        if failure is not None:
            raise failure from error

    def _wake(self) -> None:
        """Hand the queued waiters their outcome (lock held, no sync in flight)."""
        if not self._waiters:
            return
        waiting: list[_Waiter] = []
        for waiter in self._waiters:
            if waiter.ticket <= self.synced:
                waiter.role = _DONE
            elif self.failed is not None:
                waiter.role = _FAILED
            else:
                waiting.append(waiter)
                continue
            waiter.lock.release()
        if waiting:
            lead = waiting.pop(0)
            lead.role = _LEAD
            lead.lock.release()
        self._waiters = waiting

    def _stop_once(self) -> None:
        if not self._stopped:
            self._stopped = True
            self._stop()


class _Waiter:
    """An appender waiting for a sync: its lock is held until :meth:`GroupCommit._wake`
    releases it with ``role`` set."""

    __slots__ = ("lock", "role", "ticket")

    def __init__(self, ticket: int, lock: Any) -> None:
        self.ticket = ticket
        self.role = ""
        self.lock = lock
        self.lock.acquire()
