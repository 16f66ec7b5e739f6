"""Per-visit overhead of the federated loop: N clients x 1 batch each vs 1 client x N batches.

Both train the same N batches of 64 (same samples, one round, one local epoch, CSVLogger, no
checkpointing); the difference divided by N is what a client visit costs on top of its training step
(bank swap, dataloader and fetcher set-up, hooks, stats, per-visit logging). Shared generators and
independent ones (each client its own bank and optimizer; aggregation ``none``, and ``fedavg`` for
information). A smaller generator (hidden 256, latent 64, cond_width 64) keeps 100 independent banks in
memory and makes the per-step time small next to the overhead being measured. Target: <= 20 ms per visit.
"""

from __future__ import annotations

import sys
import tempfile

import _common as c

TARGET_MS = 20.0
DIMS = {"hidden_dim": 256, "latent_dim": 64, "cond_width": 64}
CONTENDERS = [
    ("shared: 1 client x N batches", True, 1, "none"),
    ("shared: N clients x 1 batch", True, None, "none"),
    ("independent: 1 client x N batches", False, 1, "none"),
    ("independent: N clients x 1 batch", False, None, "none"),
    ("independent+fedavg: N clients x 1 batch", False, None, "fedavg"),
]


def setting(smoke: bool) -> dict:
    return {"smoke": smoke, "clients": 10 if smoke else 100}


def run_contender(spec: dict) -> dict:
    from a2vgen.data.clients import ClientSpec

    dims = c.SMOKE_DIMS if spec["smoke"] else DIMS
    n = spec["clients"]
    source = c.demo_source(spec["smoke"], 10, n * c.BATCH // 10)
    classes = source.load().classes
    if spec["num_clients"] == 1:
        clients = [ClientSpec("0", classes=classes)]
    else:  # client i holds class i % 10; each class is split among 10 clients: 64 samples, 1 batch each
        clients = [ClientSpec(str(i), classes=[classes[i % 10]]) for i in range(n)]
    dm = c.datamodule(source, clients)
    _ = dm.data
    module = c.module("UnifiedGenerator", dm, dims)
    counters: list = []
    with tempfile.TemporaryDirectory() as root:
        trainer = c.trainer(root, 1, 1, shared=spec["shared"], checkpoint=False, aggregation=spec["aggregation"])
        seconds, samples = c.timed_fit(trainer, module, dm, counters)
    return {
        "seconds": seconds,
        "samples": samples,
        "visits": counters[0].visits,
        "visit_seconds": counters[0].visit_seconds,
    }


def main(argv: list[str] | None = None) -> int:
    args = c.parser(__doc__.splitlines()[0]).parse_args(argv)
    if args.worker:
        return c.worker_main(run_contender, args.worker)
    base = setting(args.smoke)
    specs = [
        {**base, "name": name, "shared": shared, "num_clients": k or base["clients"], "aggregation": agg}
        for name, shared, k, agg in CONTENDERS
    ]
    repeats = 1 if args.smoke else args.repeats
    res = c.alternate(__file__, run_contender, specs, repeats, args.smoke or args.inprocess)
    n = base["clients"]
    rows = []
    worst = 0.0
    for name, _shared, k, _ in CONTENDERS:
        r = res[name]
        if k == 1:
            ref = r
            extra = extra_in = float("nan")
        else:
            extra = (r["seconds"] - ref["seconds"]) / (n - 1) * 1000
            extra_in = (r["visit_seconds"] - ref["visit_seconds"]) / (n - 1) * 1000
            if "fedavg" not in name:
                worst = max(worst, extra)
        rows.append(
            [name, r["visits"], r["samples"], r["seconds"], r["visit_seconds"], extra, extra_in, r["runs"], c.noisy(r)]
        )
    c.print_table(
        f"visit_overhead: N={n} batches of 64, median of runs (hidden 256, latent 64, fp32, 2 threads)",
        [
            "contender",
            "visits",
            "samples",
            "fit s",
            "in visits s",
            "ms/visit (fit)",
            "ms/visit (in visits)",
            "runs",
            "noisy",
        ],
        [[("-" if isinstance(v, float) and v != v else v) for v in row] for row in rows],
    )
    print(
        f"target <= {TARGET_MS:.0f} ms per visit (fit wall time, shared and independent): {worst:.1f} ms -> {c.verdict(worst <= TARGET_MS)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
