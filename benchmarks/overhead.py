"""Framework overhead: the best raw PyTorch loop of the same math vs the full federated fit path.

Same data, same sample-epochs (two clients of five classes, ``rounds`` rounds of ``local_epochs`` epochs,
shared unified generator at the default size, SD conditioning, batch 64, fp32, 2 threads).
Contenders: a plain loop (batched, fused AdamW, per-generator clip, no Lightning); ``FederatedTrainer.fit``
with CSVLogger and RoundCheckpoint (the default path); the same with checkpointing off.
Target: full fit path >= 0.85x of the raw loop's samples/s.
"""

from __future__ import annotations

import sys

import _common as c

TARGET = 0.85
RAW = "raw PyTorch loop (fused AdamW)"
FULL = "fit: CSVLogger + RoundCheckpoint"
NOCKPT = "fit: CSVLogger, no checkpointing"


def setting(smoke: bool) -> dict:
    if smoke:
        return {"smoke": True, "train_per_class": 8, "rounds": 1, "local_epochs": 1}
    return {"smoke": False, "train_per_class": 96, "rounds": 1, "local_epochs": 3}


def run_contender(spec: dict) -> dict:
    dims = c.SMOKE_DIMS if spec["smoke"] else c.default_dims()
    dm = c.two_client_datamodule(spec)
    _ = dm.data
    if spec["name"] == RAW:
        seconds, samples = c.raw_train(dm, dims, spec["rounds"], spec["local_epochs"], c.BATCH, best=True)
    else:
        seconds, samples = c.timed_unified_fit(dm, dims, spec["rounds"], spec["local_epochs"], spec["name"] == FULL)
    return {"seconds": seconds, "samples": samples, "samples_per_s": samples / seconds}


def main(argv: list[str] | None = None) -> int:
    args = c.parser(__doc__.splitlines()[0]).parse_args(argv)
    if args.worker:
        return c.worker_main(run_contender, args.worker)
    base = setting(args.smoke)
    specs = [{**base, "name": n} for n in (RAW, FULL, NOCKPT)]
    title = "overhead: samples/s, median of runs (shared unified generator, batch 64, fp32, 2 threads)"
    rows = c.throughput_table(__file__, run_contender, specs, args, RAW, title, "vs raw")
    for row in rows[1:]:
        print(f"target {row[0]} >= {TARGET}x raw: {row[4]:.3f}x -> {c.verdict(row[4] >= TARGET)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
