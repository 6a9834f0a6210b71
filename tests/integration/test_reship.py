"""`falconctl wal reship --from` past the shipped position (issue 15 item 14):
it used to ship from there, skipping the records between, and then delete their
segments as shipped. It is refused; a later pass ships every record."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time

import psycopg2

from audit.record import AuditRecord
from audit.shipper import Shipper
from audit.store import PgStore
from audit.wal import WalWriter, list_streams
from tests.stacks import make_repo, stack_env


def record(n: int) -> bytes:
    inputs = bytes(range(64))
    return AuditRecord(
        request_id=f"reship-{n:04d}", ts=time.time(), host="h", model="digits", version="1",
        face="v1", input_digest=hashlib.sha256(inputs).hexdigest(),
        input_meta=[{"name": "input", "dtype": "float32", "shape": [1, 16]}],
        outputs={"label": {"dtype": "int64", "shape": [1], "data": [n % 10]}},
        labels=[n % 10], cached=False, latency_ms=1.0, inputs=inputs,
        request_key=f"k-{n}").to_payload()


def landed(dsn: str) -> set[str]:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT request_id FROM audit.predictions WHERE request_id LIKE 'reship-%'")
        found = {r[0] for r in cur.fetchall()}
    conn.close()
    return found


def test_reship_past_the_shipped_position_is_refused_and_loses_nothing(tmp_path, pg_dsn):
    wal = tmp_path / "wal"
    writer = WalWriter(wal, "h-1-1", sync="always", segment_bytes=4096, min_free_bytes=0)
    for n in range(20):
        writer.append(record(n))
    store = PgStore(pg_dsn)
    store.migrate()
    Shipper(wal, store).ship_once()  # records 0-19 land
    ends = [writer.append(record(n)) for n in range(20, 80)]  # several segments, not shipped
    [stream] = list_streams(wal)
    env = stack_env(tmp_path, make_repo(tmp_path / "models"), FALCON_AUDIT_DSN=pg_dsn,
                    FALCON_AUDIT_WAL_DIR=str(wal))
    late = ends[-5]
    out = subprocess.run([sys.executable, "-m", "falconctl", "wal", "reship", stream,
                          "--from", f"{late[0]}:{late[1]}"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "past the shipped position" in out.stderr, out.stdout + out.stderr
    Shipper(wal, store).ship_once()
    assert landed(pg_dsn) == {f"reship-{n:04d}" for n in range(80)}
    writer.close()
    store.close()
