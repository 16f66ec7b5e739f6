"""Run every benchmark, each in its own process (each compares its contenders in alternating processes).

``python benchmarks/run_all.py [--smoke] [--repeats N] [--only NAME ...]``; ``make bench`` runs it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ["vs_original", "overhead", "per_class_scaling", "visit_overhead", "memory", "embed_cache", "quality"]
REPEATED = {"vs_original", "overhead", "per_class_scaling", "visit_overhead"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes (a few seconds per benchmark)")
    p.add_argument("--repeats", type=int, default=3, help="runs per contender (median reported)")
    p.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run only these benchmarks")
    args = p.parse_args(argv)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)
    failed = []
    for name in args.only or BENCHMARKS:
        cmd = [sys.executable, str(HERE / f"{name}.py")]
        if args.smoke:
            cmd.append("--smoke")
        elif name in REPEATED:
            cmd += ["--repeats", str(args.repeats)]
        print(f"\n=== {name} ({' '.join(cmd[1:])})", flush=True)
        start = time.perf_counter()
        rc = subprocess.run(cmd, env=env, stderr=subprocess.DEVNULL if args.smoke else None).returncode
        print(f"=== {name}: exit {rc}, {time.perf_counter() - start:.0f} s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
