"""Rate limits in HAProxy (stick tables): per API key, by the key's class, and
per source address; a 429 is JSON with ``Retry-After``, and one noisy caller
never costs another its service."""

from __future__ import annotations

import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import settings
from apikeys import parse
from falconctl.stack import haproxy_env, haproxy_files, parse_hosts
from tests.httpx_lite import Answer, post_json, request
from tests.stacks import create_key, falconctl

PREDICT = "/v1/models/digits/predict"
PER_KEY = 20  # requests per 10 s window, for keys of the default class


def predict(addr: str, key: str) -> Answer:
    return post_json(addr, PREDICT, {"instances": [[0.0] * 64]}, headers={"X-API-Key": key})


def assert_rate_limited(ans: Answer) -> None:
    assert ans.status == 429, (ans.status, ans.body)
    assert ans.json() == {"error": "rate limited"}
    assert ans.headers["retry-after"] == "10"


@pytest.mark.parametrize("hosts", ["", "host-a=10.0.0.2:8000,host-b=10.0.0.3:8000"])
def test_haproxy_accepts_the_config_with_the_default_settings(tmp_path, hosts):
    """Single host (backend edges) and several hosts (ops/haproxy/hosts.cfg rendered
    with one server line per host)."""
    (tmp_path / "falcon.toml").write_text("")
    s = settings.load(tmp_path / "falcon.toml",
                      env={"FALCON_PATHS_RUN_DIR": str(tmp_path / "run"),
                           "FALCON_PATHS_STATE_DIR": str(tmp_path / "state"),
                           "FALCON_HAPROXY_HOSTS": hosts})
    env = haproxy_env(s)
    assert env["FALCON_HAPROXY_RATE_PER_IP"] == "100000"
    assert env["FALCON_HAPROXY_RATE_PER_KEY"] == "50000"
    assert env["FALCON_HAPROXY_BACKEND"] == ("hosts" if hosts else "edges")
    files = haproxy_files(s)
    assert len(files) == (4 if hosts else 2)
    if hosts:
        rendered = Path(files[3]).read_text()
        assert "server host-a 10.0.0.2:8000 check" in rendered
        assert "server host-b 10.0.0.3:8000 check" in rendered
    out = subprocess.run(["haproxy", "-c", *files], env={**os.environ, **env},
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("hosts, why", [
    ("a=10.0.0.2", "expected name=address:port"),
    ("10.0.0.2:8000", "expected name=address:port"),
    ("a b=10.0.0.2:8000", "expected name=address:port"),
    ("a=10.0.0.2:70000", "expected name=address:port"),
    ("a=10.0.0.2:8000,a=10.0.0.3:8000", "listed twice"),
])
def test_a_bad_hosts_list_is_refused_naming_the_key(hosts, why):
    with pytest.raises(settings.ConfigError, match=f"haproxy.hosts: .*{why}"):
        parse_hosts(hosts)


def test_a_noisy_key_is_limited_while_others_keep_full_service(make_stack):
    stack = make_stack(start=False, FALCON_AUTH_ENABLED="true",
                       FALCON_HAPROXY_RATE_PER_KEY=str(PER_KEY),
                       FALCON_HAPROXY_KEY_CLASSES="high=1000")
    noisy, quiet = create_key(stack, "noisy"), create_key(stack, "quiet")
    vip = create_key(stack, "vip", "--class", "high")
    stack.start()
    addr = stack.settings.haproxy.bind
    with ThreadPoolExecutor(8) as pool:
        def many(key: str, n: int) -> list[Answer]:
            return list(pool.map(lambda _: predict(addr, key), range(n)))
        loud = many(noisy, 3 * PER_KEY)
        assert sum(a.status == 200 for a in loud) == PER_KEY, [a.status for a in loud]
        for ans in loud:
            if ans.status != 200:
                assert_rate_limited(ans)
        # the noisy key keeps being refused; the quiet one, sent meanwhile, is not
        mixed = list(pool.map(lambda i: predict(addr, quiet if i % 2 else noisy), range(30)))
        assert [a.status for a in mixed[1::2]] == [200] * 15
        assert {a.status for a in mixed[0::2]} == {429}
        # a key of the "high" class has its own, higher limit
        assert {a.status for a in many(vip, 3 * PER_KEY)} == {200}


def test_a_forged_secret_with_someone_elses_id_does_not_use_up_their_allowance(make_stack):
    stack = make_stack(start=False, FALCON_AUTH_ENABLED="true",
                       FALCON_HAPROXY_RATE_PER_KEY=str(PER_KEY))
    victim = create_key(stack, "victim")
    stack.start()
    addr = stack.settings.haproxy.bind
    forged = victim[:16] + "x" * 43
    statuses = [predict(addr, forged).status for _ in range(2 * PER_KEY)]
    assert set(statuses) == {401, 429}  # refused by the edge, then limited by HAProxy
    assert {predict(addr, victim).status for _ in range(PER_KEY)} == {200}


@pytest.mark.parametrize("header", ["Authorization", "X-API-Key"])
def test_blanks_around_a_key_buy_no_fresh_allowance(make_stack, header):
    """The edge strips the blanks around a key; HAProxy must count the key, not the
    header's bytes, or each count of blanks is a fresh stick-table entry."""
    stack = make_stack(start=False, FALCON_AUTH_ENABLED="true",
                       FALCON_HAPROXY_RATE_PER_KEY=str(PER_KEY))
    padded, plain = create_key(stack, "padded"), create_key(stack, "plain")
    stack.start()
    addr = stack.settings.haproxy.bind

    def send(value: str) -> int:
        return post_json(addr, PREDICT, {"instances": [[0.0] * 64]},
                         headers={header: value}).status

    # what the edge strips around a Bearer key (str.strip of a latin-1 value);
    # around an X-API-Key only the HTTP parsers' spaces and tabs
    kinds = " \t\x85\xa0" if header == "Authorization" else " \t"
    blanks = [" " * (i % 7) + kinds[i % len(kinds)] * (i % 3) + " " * (i // 7)
              for i in range(40)]
    prefix = "Bearer " if header == "Authorization" else ""
    padded_statuses = [send(f"{prefix}{b}{padded}{b[::-1]}") for b in blanks]
    plain_statuses = [send(f"{prefix}{plain}") for _ in blanks]
    assert plain_statuses == [200] * PER_KEY + [429] * (40 - PER_KEY)
    assert padded_statuses == plain_statuses


def test_a_class_given_while_haproxy_runs_applies_without_a_reload(make_stack):
    stack = make_stack(start=False, FALCON_AUTH_ENABLED="true",
                       FALCON_HAPROXY_RATE_PER_KEY=str(PER_KEY),
                       FALCON_HAPROXY_KEY_CLASSES="high=1000")
    stack.start()
    out = falconctl(stack, "keys", "create", "--name", "late-vip", "--class", "high")
    assert "per-key limits updated" in out.stderr, out.stderr
    key = out.stdout.strip()
    map_text = (stack.log_dir.parent / "run" / "haproxy-key-limits.map").read_text()
    assert map_text == f"{parse(key)} 1000\n"
    deadline = time.monotonic() + 2.0
    while predict(stack.settings.haproxy.bind, key).status != 200:  # the edge's reload
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert {predict(stack.settings.haproxy.bind, key).status for _ in range(2 * PER_KEY)} == {200}


def test_per_address_limit(make_stack):
    stack = make_stack(FALCON_HAPROXY_RATE_PER_IP="30")
    addr = stack.settings.haproxy.bind
    answers = [request(addr, "GET", "/v2/health/live") for _ in range(40)]
    # start-up's readiness polls went through HAProxy too: they count
    served = next(i for i, a in enumerate(answers) if a.status != 200)
    assert 20 <= served <= 30 and all(a.status == 200 for a in answers[:served])
    for ans in answers[served:]:
        assert_rate_limited(ans)
