"""Generate the heavy benchmark model: a float32 MLP 1024 -> 4 x 4352 -> 10 (~245 MB).

Usage::

    python -m bench.gen_heavy_model --repo /tmp/models [--name heavy] [--version 1]
        [--hidden 4352] [--layers 4] [--input 1024] [--classes 10] [--seed 0]

Writes ``REPO/NAME/VERSION/model.onnx`` (outputs ``label`` int64 [N], ``probabilities``
float32 [N, classes]) and ``REPO/NAME/config.toml``. The output is not committed; the
model is a pure function of the arguments. The generator itself lives in
``tests/modelfactory.py`` so tests can build small variants of the same model.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tests.modelfactory import write_mlp_model


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repo", type=Path, required=True, help="model repository directory")
    p.add_argument("--name", default="heavy")
    p.add_argument("--version", default="1")
    p.add_argument("--hidden", type=int, default=4352)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--input", type=int, default=1024, dest="input_dim")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    start = time.perf_counter()
    path = write_mlp_model(
        a.repo,
        a.name,
        input_dim=a.input_dim,
        hidden=a.hidden,
        layers=a.layers,
        classes=a.classes,
        seed=a.seed,
        version=a.version,
    )
    size_mb = path.stat().st_size / 1e6
    print(f"wrote {path} ({size_mb:.1f} MB) in {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
