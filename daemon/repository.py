"""The model repository on disk.

Layout::

    <repo>/
      <model>/
        config.toml          # per-model configuration (ModelConfig)
        <version>/           # a positive integer
          model.onnx

A model directory without ``config.toml`` gets the defaults. A version
directory without ``model.onnx`` is skipped with a warning (a copy may be in
progress). Names are restricted to ``[A-Za-z0-9_.-]`` so they are safe in
segment names, URLs and metric labels.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from settings.schema import ConfigError, key
from settings.tables import parse_table

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.toml"


class RepositoryError(Exception):
    """The repository or a model's config is malformed; the message names the
    file and the key."""


# The [batching] section's defaults (see BatchingConfig and bench/daemon_batching.py).
DEFAULT_QUEUE_DELAY_US = 0
DEFAULT_CONCURRENT_BATCHES = 1
DEFAULT_QUEUE_BATCHES = 8  # max_queue_rows defaults to this many full batches
MAX_QUEUE_DELAY_US = 1_000_000


@dataclass(frozen=True)
class BatchingConfig:
    """The ``[batching]`` section: dynamic batching of one model's versions
    (:mod:`daemon.batcher`). ``None`` means "derived from the model".

    NOTE: the defaults come from ``bench/daemon_batching.py`` on 2 cores: a
    delay costs a lone request at least 1 ms (asyncio's epoll timer rounds up to
    whole milliseconds) and bought no throughput once only one batch of a
    version runs at a time; two batches of the same version at once fought for
    the cores and ran fewer rows per run.
    """

    enabled: bool | None = key(
        None, "Coalesce concurrent requests into one run. Default: on when the first "
        "dimension of every input and output is dynamic (a batch dimension), off otherwise; "
        "true on a model without a batch dimension is logged and ignored. Batching assumes "
        "rows are independent: false for a model whose output for one row depends on others.")
    max_run_rows: int | None = key(
        None, "Rows per run of the model (default: the model's max_request_rows); a single "
        "request with more rows runs alone.", min=1, max=1 << 20, formerly="max_batch_size")
    max_queue_delay_us: int = key(
        DEFAULT_QUEUE_DELAY_US, "How long the first request of a batch waits for others; a "
        "batch also runs as soon as it is full. 0: no waiting, batches form from the requests "
        "that queue while the previous batch runs.", min=0, max=MAX_QUEUE_DELAY_US)
    max_queue_rows: int | None = key(
        None, "Rows waiting (not yet running) beyond which a request is refused Overloaded "
        f"at once (default {DEFAULT_QUEUE_BATCHES} full batches).", min=1, max=1 << 24)
    max_concurrent_batches: int = key(
        DEFAULT_CONCURRENT_BATCHES, "Batches of one version running at once (ONNX Runtime's "
        "intra-op threads already spread one run over the cores; the daemon's other inference "
        "threads serve other versions).", min=1, max=64)
    exact: bool = key(
        True, "A row's answer never depends on what it ran with: a one-row request that runs "
        "alone runs as two copies of its row, because ONNX Runtime rounds a single row "
        "differently (daemon.batcher), and tree ensembles run on one intra-op thread. false "
        "saves that: free for small models and for prepack = true, but a big MatMul model "
        "without prepacking runs a lone row up to 2x faster, and its answer may then differ in "
        "the last bits from the one the same row gets in a batch, from a cached answer, and "
        "from the audit row of a request HAProxy re-sent.")


@dataclass(frozen=True)
class CacheConfig:
    """The ``[cache]`` section, read by the edge: whether answers of this model
    are cached in Memcached, and for how long. A model whose inference is cheaper
    than a cache round trip (the digits demo: measured in bench/RESULTS.md) turns it
    off."""

    enabled: bool = key(True, "Cache this model's answers in Memcached (the edge).")
    ttl_s: int = key(300, "Seconds a cached answer lives.", min=1, max=30 * 86400)


@dataclass(frozen=True)
class ModelConfig:
    """Per-model settings from ``<repo>/<model>/config.toml`` (``falconctl config
    --describe`` lists every key); tables this file does not declare are kept in
    ``extra`` for other tools."""

    max_request_rows: int = key(256, "Rows one request may carry (413 beyond); the edge's "
                                     "edge.max_request_rows bounds it too. Not the rows of a "
                                     "run: that is batching.max_run_rows.", min=1, max=1 << 20,
                                formerly="max_batch_size")
    prepack: bool = key(False, "Let ONNX Runtime prepack the weights: faster MatMul, but a "
                               "private copy of them in the daemon beside the shared segment.")
    intra_op_threads: int = key(0, "ONNX Runtime intra-op threads for this model (0: the "
                                   "daemon's daemon.intra_op_threads).", min=0, max=64)
    labels: tuple[str, ...] = key((), "Class names, in the order of the probabilities' "
                                      "columns, for /v1 (a ZipMap's own labels win).")
    label_output: str = key("", "The output /v1 answers as the label (default: the argmax of "
                                "the probabilities).")
    probabilities_output: str = key("", "The output /v1 answers as probabilities (default: "
                                        "the first 2-D float output).")
    description: str = key("", "Free text, shown in the model metadata.")
    batching: BatchingConfig = field(default_factory=BatchingConfig,
                                     metadata={"doc": "[batching]"})
    cache: CacheConfig = field(default_factory=CacheConfig, metadata={"doc": "[cache]"})
    extra: dict[str, Any] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        # NOTE: "max_batch_size" on the wire and in V2 metadata: Triton's name for it.
        return {"max_batch_size": self.max_request_rows, "labels": list(self.labels),
                "label_output": self.label_output,
                "probabilities_output": self.probabilities_output,
                "description": self.description, "prepack": self.prepack,
                "cache": {"enabled": self.cache.enabled, "ttl_s": self.cache.ttl_s}}


def parse_config(path: Path) -> ModelConfig:
    """Read and validate one model config (the settings' schema mechanism,
    :mod:`settings.tables`); raises :class:`RepositoryError` naming the file and key."""
    if not path.exists():
        return ModelConfig()
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RepositoryError(f"{path}: {exc}") from None
    extra: dict[str, Any] = {}
    try:
        config = parse_table(ModelConfig, data, str(path), extra=extra)
    except ConfigError as exc:
        raise RepositoryError(str(exc)) from None
    return dataclasses.replace(config, extra=extra)


@dataclass(frozen=True)
class VersionEntry:
    model: str
    version: str
    path: Path
    config: ModelConfig


def scan(repo: Path, broken: dict[str, str] | None = None) -> list[VersionEntry]:
    """Every loadable ``(model, version)`` in the repository, sorted.

    Raises :class:`RepositoryError` if the repository is missing, or if a config is
    malformed and ``broken`` is None. With ``broken``, a model whose config is malformed
    is left out and its error recorded there (model -> message), so one bad config never
    hides or blocks the others. A bad model name is skipped with a warning.
    """
    if not repo.is_dir():
        raise RepositoryError(f"model repository {repo} is not a directory")
    entries = []
    for model_dir in sorted(p for p in repo.iterdir() if p.is_dir()):
        if not NAME_RE.match(model_dir.name):
            log.warning("skipping %s: not a valid model name", model_dir)
            continue
        try:
            config = parse_config(model_dir / CONFIG_FILE)
        except RepositoryError as exc:
            if broken is None:
                raise
            broken[model_dir.name] = str(exc)
            continue
        for vdir in sorted((p for p in model_dir.iterdir() if p.is_dir()), key=_version_key):
            if not vdir.name.isdigit() or int(vdir.name) < 1:
                continue
            if not (vdir / MODEL_FILE).is_file():
                log.warning("skipping %s: no %s", vdir, MODEL_FILE)
                continue
            entries.append(VersionEntry(model_dir.name, str(int(vdir.name)), vdir / MODEL_FILE,
                                        config))
    return entries


def _version_key(p: Path) -> tuple[int, str]:
    return (int(p.name), "") if p.name.isdigit() else (0, p.name)
