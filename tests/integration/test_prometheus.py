"""ops/prometheus and ops/grafana against the real thing: promtool checks the
config and the rules and runs the alert unit tests; then a real Prometheus
(Debian's ``prometheus`` package) scrapes a running stack with the project's
own scrape config, and through its HTTP API every target is up, every
dashboard panel's query returns series and every rule evaluates cleanly."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from falconctl.stack import free_port
from tests.httpx_lite import post_json
from tests.modelfactory import write_mlp_model
from tests.otlp_receiver import OtlpReceiver
from tests.stacks import make_repo

ROOT = Path(__file__).resolve().parents[2]
PROM_DIR = ROOT / "ops" / "prometheus"
DASHBOARD = ROOT / "ops" / "grafana" / "falcon-dashboard.json"
DIGITS = np.load(ROOT / "tests" / "data" / "digits_test.npz")


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} not found: install Debian's prometheus package (make deps)"
    return path


def promtool(*args: str) -> str:
    out = subprocess.run([tool("promtool"), *args], cwd=PROM_DIR, capture_output=True,
                         text=True, timeout=60)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "WARNING" not in text.upper(), text
    return text


def test_promtool_checks_config_rules_and_alert_unit_tests():
    assert "SUCCESS" in promtool("check", "config", "prometheus.yml")
    assert "SUCCESS" in promtool("check", "rules", "alerts.yml")
    assert "SUCCESS" in promtool("test", "rules", "alerts_test.yml")


# --- a real Prometheus against a running stack ---------------------------------

def write_config(dest: Path, edge: str, haproxy: str) -> Path:
    """The project's prometheus.yml with 1 s intervals, its rules and target
    files (labels kept) naming this stack's edge and HAProxy exporter."""
    text = (PROM_DIR / "prometheus.yml").read_text()
    for key in ("scrape_interval", "scrape_timeout", "evaluation_interval"):
        text, n = re.subn(rf"^(\s+{key}:) \S+$", r"\1 1s", text, flags=re.M)
        assert n == 1, key
    (dest / "prometheus.yml").write_text(text)
    shutil.copy(PROM_DIR / "alerts.yml", dest / "alerts.yml")
    (dest / "targets").mkdir()
    for name, addr in (("edge.json", edge), ("haproxy.json", haproxy)):
        groups = json.loads((PROM_DIR / "targets" / name).read_text())
        for group in groups:
            group["targets"] = [addr]
        (dest / "targets" / name).write_text(json.dumps(groups))
    return dest / "prometheus.yml"


class Prometheus:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str, **params: str) -> Any:
        url = f"{self.base}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=5) as resp:
            doc = json.load(resp)
        assert doc["status"] == "success", doc
        return doc["data"]

    def query(self, expr: str) -> list:
        try:
            return self.get("/api/v1/query", query=expr)["result"]
        except urllib.error.HTTPError as exc:  # 400/422: a bad expression
            raise AssertionError(f"{expr}: {exc.read().decode()}") from None


@contextmanager
def running_prometheus(stack: Any, tmp_path: Path, *flags: str) -> Iterator[Prometheus]:
    """A real Prometheus with the project's config scraping ``stack``."""
    config = write_config(tmp_path, stack.settings.edge.bind, stack.settings.haproxy.stats_bind)
    port = free_port()
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen([tool("prometheus"), f"--config.file={config}",
                             f"--storage.tsdb.path={tmp_path / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
                             *flags], stdout=log, stderr=subprocess.STDOUT)
    try:
        yield Prometheus(port)
        assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


@pytest.fixture
def prometheus(make_stack, pg_dsn, memcached, tmp_path) -> Iterator[tuple[Prometheus, Any]]:
    repo = make_repo(tmp_path / "models")  # digits (cache off) + a cached 16-wide MLP
    write_mlp_model(repo, "mlp", input_dim=16, hidden=16, layers=1, classes=4, seed=1,
                    version="1")
    stack = make_stack(audit=True, repo=repo, FALCON_AUDIT_DSN=pg_dsn,
                       FALCON_CACHE_SERVERS=memcached.addr)
    with running_prometheus(stack, tmp_path) as prom:
        yield prom, stack


def panel_queries(exemplars: bool = False) -> list[str]:
    """Every target expression of every panel (``exemplars``: of the targets that show
    exemplars), Grafana variables filled in."""
    dash = json.loads(DASHBOARD.read_text())
    variables = [v["name"] for v in dash["templating"]["list"]]
    exprs = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            if exemplars and not target.get("exemplar"):
                continue
            expr = target["expr"].replace("$__rate_interval", "30s")
            for name in variables:
                expr = expr.replace(f"${{{name}}}", ".*").replace(f"${name}", ".*")
            assert "$" not in expr, f"unsubstituted variable in {expr}"
            exprs.append(expr)
    return exprs


def wait_for(check, what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except (OSError, AssertionError):
            result = None
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_prometheus_scrapes_the_stack_and_every_panel_and_rule_evaluates(prometheus):
    prom, stack = prometheus
    addr = stack.settings.haproxy.bind
    rows = DIGITS["X"]
    for i in range(20):
        assert post_json(addr, "/v1/models/digits/predict",
                         {"instances": rows[i:i + 1 + i % 3].tolist()}).status == 200
    # the cached model: a miss, then the same input again is a hit
    mlp = {"instances": np.ones((2, 16), dtype=np.float32).tolist()}
    assert post_json(addr, "/v1/models/mlp/predict", mlp).json()["cached"] is False
    wait_for(lambda: post_json(addr, "/v1/models/mlp/predict", mlp).json()["cached"],
             "a cache hit", 5)
    assert post_json(addr, "/v1/models/digits/predict", {"instances": [[1]]}).status == 400

    def all_up() -> bool:
        targets = prom.get("/api/v1/targets")["activeTargets"]
        return ({t["labels"]["job"] for t in targets} == {"falcon-edge", "haproxy"}
                and all(t["health"] == "up" for t in targets))
    wait_for(all_up, "every target up")

    # rates need two scrapes in their window; then every panel shows data
    for expr in panel_queries():
        wait_for(lambda e=expr: prom.query(e), f"a series from panel query {expr}", 15)

    def rules() -> list[dict]:
        groups = prom.get("/api/v1/rules")["groups"]
        found = [r for g in groups for r in g["rules"]]
        evaluated = all(not r["lastEvaluation"].startswith("0001") for r in found)
        return found if evaluated else []
    found = wait_for(rules, "every rule evaluated")
    names = {r["name"] for r in found}
    assert {"FalconEdgeDown", "FalconHighErrorRatio", "FalconLatencyP99OverSLO",
            "FalconShipLagHigh", "FalconWalPendingHigh", "FalconBreakerOpen"} <= names
    for rule in found:
        assert rule["health"] == "ok" and not rule.get("lastError"), rule
    # recording rules produce series (the alerts built on them compare those)
    for rule in found:
        if rule["type"] == "recording":
            name = rule["name"]
            wait_for(lambda n=name: prom.query(n), f"a series of {name}", 10)
    # a healthy stack fires nothing
    assert [a for a in prom.get("/api/v1/alerts")["alerts"] if a["state"] == "firing"] == []


def test_prometheus_stores_the_exemplars_the_latency_panel_links_to_traces(make_stack, tmp_path):
    """Tracing on: Prometheus (exemplar storage on) scrapes OpenMetrics from the edge and
    keeps the trace ids of sampled requests, so every panel target with exemplars on finds
    some, each naming a trace the collector received."""
    with OtlpReceiver() as collector:
        stack = make_stack(FALCON_TRACING_ENDPOINT=collector.url,
                           FALCON_TRACING_SAMPLE_RATIO="1.0")
        with running_prometheus(stack, tmp_path, "--enable-feature=exemplar-storage") as prom:
            started = time.time()
            exprs = panel_queries(exemplars=True)
            assert exprs, "no dashboard panel shows exemplars"

            def exemplars(expr: str) -> list[str]:
                post_json(stack.settings.haproxy.bind, "/v1/models/digits/predict",
                          {"instances": DIGITS["X"][:2].tolist()})
                found = prom.get("/api/v1/query_exemplars", query=expr, start=str(started - 60),
                                 end=str(time.time() + 60))
                return [e["labels"]["trace_id"] for series in found for e in series["exemplars"]]

            for expr in exprs:
                trace_ids = wait_for(lambda e=expr: exemplars(e), f"exemplars of {expr}", 30)
                received = {s.trace_id for s in collector.snapshot()}
                assert set(trace_ids) & received, (expr, trace_ids[:3])

