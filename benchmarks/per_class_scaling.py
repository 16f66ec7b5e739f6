"""Per-class generators at scale: PerClassGenerator with 10 and 50 keys vs one UnifiedGenerator.

Same total samples for every contender (one client holding every class with 64 training samples each, one
round of the original system's 10 local epochs (SPEC §4), shared generators, batch 64, default generator
size, SD conditioning, fp32, 2 threads, CSVLogger, no checkpointing: a per-round checkpoint of 50
default-size generators with Adam state is ~6 GB). Key-grouped batches (the default: each batch trains one
generator) and, for information, mixed batches (``key_grouped=False``: every batch slices into many
generators; one local epoch only, it is ~17x slower, so compare its samples/s).
Target: 50 keys (key-grouped) <= 1.5x the unified time.
"""

from __future__ import annotations

import sys
import tempfile

import _common as c

TARGET = 1.5
UNIFIED = "unified (50 classes)"
PC10 = "per_class, 10 keys"
PC50 = "per_class, 50 keys"
MIXED = "per_class, 50 keys, mixed batches"


def setting(smoke: bool) -> dict:
    return {"smoke": smoke, "samples": 100 if smoke else 3200, "local_epochs": 1 if smoke else 10}


def run_contender(spec: dict) -> dict:
    from a2vgen.data.clients import ClientSpec

    dims = c.SMOKE_DIMS if spec["smoke"] else c.default_dims()
    classes = 10 if spec["name"] == PC10 else 50
    source = c.demo_source(spec["smoke"], classes, spec["samples"] // classes)
    names = source.load().classes
    dm = c.datamodule(source, [ClientSpec("0", classes=names)], key_grouped=spec["name"] != MIXED)
    _ = dm.data
    cls = "UnifiedGenerator" if spec["name"] == UNIFIED else "PerClassGenerator"
    module = c.module(cls, dm, dims)
    with tempfile.TemporaryDirectory() as root:
        trainer = c.trainer(root, max_rounds=1, local_epochs=spec["local_epochs"], checkpoint=False)
        seconds, samples = c.timed_fit(trainer, module, dm)
    return {
        "keys": len(module.generator_keys),
        "seconds": seconds,
        "samples": samples,
        "samples_per_s": samples / seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = c.parser(__doc__.splitlines()[0])
    parser.add_argument("--local-epochs", type=int, help="override the 10 local epochs (1: one step per key)")
    args = parser.parse_args(argv)
    if args.worker:
        return c.worker_main(run_contender, args.worker)
    base = setting(args.smoke)
    if args.local_epochs:
        base["local_epochs"] = args.local_epochs
    specs = [{**base, "name": n} for n in (UNIFIED, PC10, PC50)]
    specs.append({**base, "name": MIXED, "repeats": 1, "local_epochs": 1})
    repeats = 1 if args.smoke else args.repeats
    res = c.alternate(__file__, run_contender, specs, repeats, args.smoke or args.inprocess)
    unified = res[UNIFIED]["samples_per_s"]
    rows = [
        [
            name,
            r["keys"],
            r["samples"],
            r["seconds"],
            r["samples_per_s"],
            unified / r["samples_per_s"],
            r["runs"],
            c.noisy(r),
        ]
        for name, r in res.items()
    ]
    c.print_table(
        "per_class_scaling: fit time per sample, median of runs (batch 64, fp32, 2 threads)",
        ["contender", "keys", "sample-epochs", "seconds", "samples/s", "time vs unified", "runs", "noisy"],
        rows,
    )
    ratio = unified / res[PC50]["samples_per_s"]
    print(f"target 50 keys <= {TARGET}x unified time: {ratio:.2f}x -> {c.verdict(ratio <= TARGET)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
