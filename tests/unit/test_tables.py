"""settings.tables: the per-model config.toml uses the settings' schema mechanism (typed
keys with docs and bounds, errors naming the file and key), and falconctl describes it."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.repository import ModelConfig, RepositoryError, parse_config
from falconctl.cli import main
from settings.schema import ConfigError
from settings.tables import describe, parse_table


def test_a_model_config_parses_into_typed_tables_and_keeps_other_tools_tables(tmp_path: Path):
    path = tmp_path / "config.toml"
    path.write_text('max_batch_size = 32\nlabels = ["a", "b"]\n[cache]\nttl_s = 60\n'
                    '[evaluation]\nmetric = "auc"\n')
    cfg = parse_config(path)
    assert (cfg.max_batch_size, cfg.labels, cfg.cache.ttl_s, cfg.cache.enabled) == (
        32, ("a", "b"), 60, True)
    assert cfg.extra == {"evaluation": {"metric": "auc"}}


@pytest.mark.parametrize("text, message", [
    ("max_batch_size = 0", "max_batch_size must be between 1"),
    ("intra_op_threads = 99", "intra_op_threads must be between 0 and 64"),
    ("prepack = 1", "prepack must be bool, got 1"),
    ("labels = [1, 2]", "labels must be a list of strings"),
    ("nope = 1", "unknown key 'nope'"),
    ("[cache]\nttl_s = 0", "cache.ttl_s must be between 1"),
    ("[cache]\nsize = 3", "unknown key 'cache.size'"),
    ("cache = 3", "cache must be a table ([cache])"),
])
def test_a_bad_key_names_the_file_and_the_key(tmp_path: Path, text: str, message: str):
    path = tmp_path / "config.toml"
    path.write_text(text + "\n")
    with pytest.raises(RepositoryError) as err:
        parse_config(path)
    assert str(path) in str(err.value) and message in str(err.value), str(err.value)


def test_parse_table_is_strict_about_bools_and_numbers():
    from daemon.repository import CacheConfig

    with pytest.raises(ConfigError, match="x.toml: cache.ttl_s must be int, got True"):
        parse_table(CacheConfig, {"ttl_s": True}, "x.toml", "cache.")
    assert parse_table(CacheConfig, {}, "x.toml") == CacheConfig()


def test_every_model_key_is_described_and_falconctl_lists_them(capsys):
    names = [k.name for k in describe(ModelConfig)]
    assert {"max_batch_size", "prepack", "batching.max_batch_size", "batching.exact",
            "cache.ttl_s"} <= set(names)
    assert all(k.doc for k in describe(ModelConfig))
    assert main(["config", "--describe"]) == 0
    out = capsys.readouterr().out
    assert "edge.deadline_ms" in out and "batching.max_queue_delay_us  (int, default 0)" in out
