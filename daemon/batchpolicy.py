"""How one model version batches: :class:`BatchPolicy`, derived by :func:`batch_policy`
from the version's ``config.toml`` (``[batching]``, daemon/repository.py) and its inputs'
and outputs' shapes. :class:`daemon.batcher.Batcher` runs by it.

Usage::

    policy = batch_policy(entry.config, lv.inputs, lv.outputs, model="digits/1")
    policy.enabled, policy.max_batch_rows, policy.reason   # why it does not batch, if not
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from daemon.repository import DEFAULT_QUEUE_BATCHES, ModelConfig

log = logging.getLogger(__name__)

UNLIMITED = 1 << 30  # max_running of an unbatched version
INLINE_BELOW_S = 300e-6  # a batching version whose runs take less runs them on the loop


class _Spec(Protocol):
    """A model input or output as :class:`daemon.loader.TensorSpec` describes it."""

    @property
    def name(self) -> str: ...
    @property
    def shape(self) -> tuple[int, ...]: ...


@dataclass(frozen=True)
class BatchPolicy:
    """How one version batches; :func:`batch_policy` derives it from the model."""

    enabled: bool
    max_batch_rows: int
    max_queue_delay_s: float
    max_queue_rows: int
    max_running: int = 1  # batches of this version in the pool at once
    reason: str = ""  # why batching is off
    inline_below_s: float = 0.0  # runs this short run on the event loop (0: never)
    exact: bool = True  # a lone row runs padded to two rows (see the module docstring)

    def to_wire(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "max_batch_size": self.max_batch_rows,
                "max_queue_delay_us": round(self.max_queue_delay_s * 1e6),
                "max_queue_rows": self.max_queue_rows, "max_running": self.max_running,
                "inline_below_us": round(self.inline_below_s * 1e6), "exact": self.exact,
                "reason": self.reason}


def unbatchable(inputs: Sequence[_Spec], outputs: Sequence[_Spec]) -> str:
    """Why a model cannot batch ("" if it can): a batch needs a dynamic first
    dimension on every input (to concatenate) and every output (to split)."""
    for what, specs in (("input", inputs), ("output", outputs)):
        for spec in specs:
            if not spec.shape or spec.shape[0] >= 0:
                return f"{what} {spec.name!r} has no dynamic first dimension"
    return ""


def batch_policy(config: ModelConfig, inputs: Sequence[_Spec], outputs: Sequence[_Spec], *,
                 model: str = "") -> BatchPolicy:
    """The effective policy of a version from its config's ``[batching]``."""
    cfg = config.batching
    rows = cfg.max_run_rows or config.max_request_rows
    why = unbatchable(inputs, outputs)
    if cfg.enabled and why:
        log.warning("model %s: [batching] enabled = true ignored: %s; running unbatched",
                    model, why)
    if cfg.enabled is False:
        why = "disabled in config.toml"
    # NOTE: unbatched, every request goes to the pool at once, as before batching
    # existed: the pool's own queue (bounded by the server's max_inflight) is the queue.
    return BatchPolicy(enabled=not why, max_batch_rows=rows,
                       max_queue_delay_s=cfg.max_queue_delay_us / 1e6,
                       max_queue_rows=cfg.max_queue_rows or DEFAULT_QUEUE_BATCHES * rows,
                       max_running=UNLIMITED if why else cfg.max_concurrent_batches,
                       reason=why, inline_below_s=0.0 if why else INLINE_BELOW_S,
                       exact=cfg.exact)
