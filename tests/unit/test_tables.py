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
    path.write_text('max_request_rows = 32\nlabels = ["a", "b"]\n[cache]\nttl_s = 60\n'
                    '[evaluation]\nmetric = "auc"\n')
    cfg = parse_config(path)
    assert (cfg.max_request_rows, cfg.labels, cfg.cache.ttl_s, cfg.cache.enabled) == (
        32, ("a", "b"), 60, True)
    assert cfg.extra == {"evaluation": {"metric": "auc"}}


@pytest.mark.parametrize("text, message", [
    ("max_request_rows = 0", "max_request_rows must be between 1"),
    ("max_batch_size = 0", "max_request_rows must be between 1"),  # its old name, same key
    ("max_batch_size = 8\nmax_request_rows = 8", "max_batch_size and max_request_rows are the same key"),
    ("[batching]\nmax_batch_size = 8\nmax_run_rows = 8",
     "batching.max_batch_size and batching.max_run_rows are the same key"),
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
    assert {"max_request_rows", "prepack", "batching.max_run_rows", "batching.exact",
            "cache.ttl_s"} <= set(names)
    assert "max_batch_size" not in names and "batching.max_batch_size" not in names
    assert "Formerly 'max_batch_size'" in {k.name: k.doc for k in describe(ModelConfig)}["max_request_rows"]
    assert all(k.doc for k in describe(ModelConfig))
    assert main(["config", "--describe"]) == 0
    out = capsys.readouterr().out
    assert "edge.deadline_ms" in out and "batching.max_queue_delay_us  (int, default 0)" in out


def test_the_old_names_of_the_row_limits_are_read_with_a_deprecation_warning(tmp_path: Path,
                                                                           caplog):
    """Rows per request and rows per run were both max_batch_size (top level and under
    [batching]); they are max_request_rows and batching.max_run_rows now, and a config
    written with the old names means the same thing, with a warning naming the new one."""
    path = tmp_path / "config.toml"
    path.write_text("max_batch_size = 64\n[batching]\nmax_batch_size = 16\n")
    with caplog.at_level("WARNING", logger="falcon.settings"):
        cfg = parse_config(path)
    assert (cfg.max_request_rows, cfg.batching.max_run_rows) == (64, 16)
    assert "'max_batch_size' is deprecated, read as 'max_request_rows'" in caplog.text
    assert "'batching.max_batch_size' is deprecated, read as 'batching.max_run_rows'" in caplog.text
    path.write_text("max_request_rows = 64\n[batching]\nmax_run_rows = 16\n")
    assert parse_config(path) == cfg


def test_the_edges_row_limit_keeps_its_old_name_in_the_file_and_the_environment(
        tmp_path: Path, caplog):
    from settings import schema

    conf = tmp_path / "falcon.toml"
    conf.write_text("[edge]\nmax_batch_rows = 99\n")
    with caplog.at_level("WARNING", logger="falcon.settings"):
        assert schema.load(conf, env={}).edge.max_request_rows == 99
        assert schema.load(None, env={"FALCON_EDGE_MAX_BATCH_ROWS": "77"}).edge.max_request_rows == 77
    assert "'edge.max_batch_rows' is deprecated, read as 'edge.max_request_rows'" in caplog.text
    assert "$FALCON_EDGE_MAX_BATCH_ROWS" in caplog.text and "$FALCON_EDGE_MAX_REQUEST_ROWS" in caplog.text
    conf.write_text("[edge]\nmax_batch_rows = 99\nmax_request_rows = 98\n")
    with pytest.raises(ConfigError, match="edge.max_batch_rows and edge.max_request_rows are the same key"):
        schema.load(conf, env={})
