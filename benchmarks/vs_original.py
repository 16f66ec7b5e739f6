"""Original training style (batch 1, one optimizer step per sample) vs ``FederatedTrainer.fit``.

Same network (default ConditionalVAE, SD conditioning), same loss, same data and sample-epochs: two
clients of five classes with ESC-50's 32 training clips per class, one round of the original system's 10
local epochs (SPEC §4). The original style is a plain loop with the default (non-fused) AdamW; the fit uses
batches of 64, fused AdamW, CSVLogger and RoundCheckpoint. The original runs once per invocation (one run
takes minutes and averages over the machine's slow and fast phases by itself); the fit ``--repeats`` times.
Target: fit >= 50x the original's samples/s.
"""

from __future__ import annotations

import sys

import _common as c

TARGET = 50.0


def setting(smoke: bool) -> dict:
    if smoke:
        return {"smoke": True, "train_per_class": 8, "local_epochs": 1}
    return {"smoke": False, "train_per_class": 32, "local_epochs": 10}


def run_contender(spec: dict) -> dict:
    dims = c.SMOKE_DIMS if spec["smoke"] else c.default_dims()
    dm = c.two_client_datamodule(spec)
    _ = dm.data
    if spec["name"] == "original (batch 1)":
        seconds, samples = c.raw_train(dm, dims, 1, spec["local_epochs"], batch_size=1, best=False)
    else:
        seconds, samples = c.timed_unified_fit(dm, dims, 1, spec["local_epochs"])
    return {"seconds": seconds, "samples": samples, "samples_per_s": samples / seconds}


def main(argv: list[str] | None = None) -> int:
    args = c.parser(__doc__.splitlines()[0]).parse_args(argv)
    if args.worker:
        return c.worker_main(run_contender, args.worker)
    base = setting(args.smoke)
    specs = [{**base, "name": "original (batch 1)", "repeats": 1}, {**base, "name": "FederatedTrainer.fit (batch 64)"}]
    title = "vs_original: samples/s, median of runs (unified generator, SD conditioning, fp32, 2 threads)"
    rows = c.throughput_table(__file__, run_contender, specs, args, "original (batch 1)", title, "speed-up")
    speedup = rows[1][4]
    print(f"target fit >= {TARGET:.0f}x original: {speedup:.1f}x -> {c.verdict(speedup >= TARGET)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
