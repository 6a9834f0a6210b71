"""The audit trail: every served prediction, durably logged and shipped once.

- :mod:`audit.record`  — what one audit record holds (the contract between the
  edge that writes it, the WAL that frames it and the shipper that lands it).
- :mod:`audit.wal`     — write-ahead log segments: framing, writer, reader.
- :mod:`audit.shipper` — tails every stream into PostgreSQL, exactly once.
- :mod:`audit.migrations` / :mod:`audit.pg` — schema and the embedded cluster.

Imports nothing from edge or daemon.
"""
