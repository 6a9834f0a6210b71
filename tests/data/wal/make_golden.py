"""Write the golden WAL segments next to this file.

    python -m tests.data.wal.make_golden          # (re)write the *.wal files
    python -m tests.data.wal.make_golden --check  # exit 1 if a file differs

Each file is segment 0 of stream ``golden``, written by the real ``WalWriter`` with a
fixed clock, so tests/unit/test_wal_golden.py can check that the writer still produces
these exact bytes and what the reader makes of each. Regenerate only on a deliberate
format change (bump ``audit.segment.VERSION``), and commit the result.

- ``good.wal``     header + 3 records (audit records ``req-1``..``req-3``)
- ``torn.wal``     good.wal cut in the middle of the third record's payload: a torn tail
- ``corrupt.wal``  good.wal with one payload byte of the second record flipped: bad CRC
                   followed by a valid record, i.e. corruption, not a torn tail
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from audit.record import AuditRecord
from audit.segment import HEADER, RECORD, segment_name
from audit.writer import WalWriter
from tests.data.golden_files import write_or_check

HERE = Path(__file__).resolve().parent

STREAM = "golden"
CREATED = 1_700_000_000.0  # the fixed clock: 2023-11-14T22:13:20Z


def record(i: int) -> AuditRecord:
    return AuditRecord(
        request_id=f"req-{i}", ts=CREATED + i, host="golden-host", model="digits",
        version="1", face="v1", input_digest=f"{i:064x}",
        input_meta=[{"name": "x", "dtype": "<f4", "shape": [1, 4]}],
        outputs={"probabilities": {"dtype": "<f4", "shape": [1, 2], "data": [[0.25, 0.75]]}},
        labels=[i % 2], cached=i == 2, latency_ms=1.5 * i, inputs=bytes(range(i, i + 16)),
        api_key_id="key-1", trace_id=None)


PAYLOADS = [record(i).to_payload() for i in (1, 2, 3)]


def record_offsets() -> list[int]:
    """Where each record of good.wal starts."""
    offsets, at = [], HEADER.size
    for payload in PAYLOADS:
        offsets.append(at)
        at += RECORD.size + len(payload)
    return offsets


def good() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        with WalWriter(Path(tmp), STREAM, sync="always", min_free_bytes=0,
                       clock=lambda: CREATED) as writer:
            for payload in PAYLOADS:
                writer.append(payload)
        return (Path(tmp) / STREAM / segment_name(0)).read_bytes()


def golden() -> dict[str, bytes]:
    data = good()
    third, second = record_offsets()[2], record_offsets()[1]
    corrupt = bytearray(data)
    corrupt[second + RECORD.size + len(PAYLOADS[1]) // 2] ^= 0x01
    return {
        "good.wal": data,
        "torn.wal": data[:third + RECORD.size + len(PAYLOADS[2]) // 2],
        "corrupt.wal": bytes(corrupt),
    }


def main(argv: list[str]) -> int:
    return write_or_check(golden(), HERE, argv, "the writer")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
