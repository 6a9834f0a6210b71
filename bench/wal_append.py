"""Measure what one WAL append costs, per sync policy and thread count.

Usage::

    python -m bench.wal_append [--dir DIR] [--records 4000] [--size 500] [--rounds 3]
        [--threads 1,8] [--out bench/out/wal_append.json]

For each policy (``always``, ``batch``, ``interval``) and each thread count, a fresh
:class:`audit.wal.WalWriter` in a temp directory under ``--dir`` (default: the system temp
dir, i.e. the disk this host's WAL would be on unless told otherwise) takes ``--records``
appends of ``--size``-byte payloads, shared evenly between the threads. Reported per case
(best of ``--rounds``):

- ``us/rec``   wall time / records: the throughput cost of one record;
- ``p50 us``, ``p99 us`` per-append latency as one caller sees it;
- ``fsyncs``   fdatasync calls made (through the writer's ``fsync`` seam, counted);
- ``rec/fsync`` records made durable per fsync (group commit shows here);
- ``cpu us``   CPU time of the process (user + system) per record, and ``switches`` its
  voluntary context switches per record: what the appends cost the rest of a busy host.

A bare ``os.write`` + ``os.fdatasync`` of the same size is measured first, for reference.
Output: a table on stdout and JSON in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from audit.wal import WalWriter
from tests.seams import CountingFsync

POLICIES = ("always", "batch", "interval")


def bare_fsync_us(directory: Path, size: int, n: int = 500) -> float:
    fd, path = tempfile.mkstemp(dir=directory)
    try:
        data = os.urandom(size)
        t0 = time.perf_counter()
        for _ in range(n):
            os.write(fd, data)
            os.fdatasync(fd)
        return (time.perf_counter() - t0) / n * 1e6
    finally:
        os.close(fd)
        os.unlink(path)


def run_case(directory: Path, policy: str, threads: int, records: int,
             size: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        fsync = CountingFsync()
        writer = WalWriter(Path(tmp), "bench", sync=policy, fsync=fsync, min_free_bytes=0)
        base = fsync.calls
        payload = os.urandom(size)
        per_thread = records // threads
        latencies: list[list[float]] = [[] for _ in range(threads)]
        start = threading.Barrier(threads + 1)

        def work(k: int) -> None:
            lat = latencies[k]
            start.wait()
            for _ in range(per_thread):
                t = time.perf_counter()
                writer.append(payload)
                lat.append(time.perf_counter() - t)

        pool = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
        for t in pool:
            t.start()
        start.wait()
        t0, cpu0, usage0 = time.perf_counter(), time.process_time(), resource.getrusage(
            resource.RUSAGE_SELF)
        for t in pool:
            t.join()
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        switches = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw - usage0.ru_nvcsw
        fsyncs = fsync.calls - base
        writer.close()
    done = per_thread * threads
    lat = sorted(x for xs in latencies for x in xs)
    return {"policy": policy, "threads": threads, "records": done,
            "us_per_record": wall / done * 1e6,
            "p50_us": statistics.median(lat) * 1e6,
            "p99_us": lat[int(len(lat) * 0.99) - 1] * 1e6,
            "fsyncs": fsyncs, "records_per_fsync": done / fsyncs if fsyncs else None,
            "cpu_us_per_record": cpu / done * 1e6, "switches_per_record": switches / done}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default=tempfile.gettempdir())
    p.add_argument("--records", type=int, default=4000)
    p.add_argument("--size", type=int, default=500)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", default="1,8")
    p.add_argument("--policies", default=",".join(POLICIES))
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "out" /
                                        "wal_append.json"))
    args = p.parse_args(argv)
    directory = Path(args.dir)
    bare = bare_fsync_us(directory, args.size)
    results = []
    for policy in args.policies.split(","):
        for threads in (int(t) for t in args.threads.split(",")):
            rounds = [run_case(directory, policy, threads, args.records, args.size)
                      for _ in range(args.rounds)]
            results.append(min(rounds, key=lambda r: r["us_per_record"]))
    print(f"WAL append, {args.size}-byte payloads, {args.records} records per case, best of "
          f"{args.rounds}; dir {directory}; {os.cpu_count()} CPUs")
    print(f"reference: os.write + os.fdatasync of {args.size} bytes: {bare:.1f} us")
    print(f"{'policy':9} {'threads':>7} {'us/rec':>8} {'p50 us':>8} {'p99 us':>8} "
          f"{'fsyncs':>7} {'rec/fsync':>9} {'cpu us':>7} {'switches':>8}")
    for r in results:
        per = f"{r['records_per_fsync']:.1f}" if r["records_per_fsync"] else "-"
        print(f"{r['policy']:9} {r['threads']:>7} {r['us_per_record']:>8.1f} "
              f"{r['p50_us']:>8.1f} {r['p99_us']:>8.1f} {r['fsyncs']:>7} {per:>9} "
              f"{r['cpu_us_per_record']:>7.1f} {r['switches_per_record']:>8.2f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"bare_fsync_us": bare, "size": args.size,
                                          "dir": str(directory), "results": results},
                                         indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
