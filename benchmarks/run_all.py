"""Run every benchmark, each in its own process, within one time budget (default 15 minutes).

``python benchmarks/run_all.py [--smoke] [--repeats N] [--budget S] [--only NAME ...]``; ``make bench`` runs
it. Each benchmark gets a share of the time left (its weight in :data:`BENCHMARKS`); it stops repeating
when its share is nearly spent and is killed (reported ``TIMED OUT``, not a failure) past it. Nothing waits for a quiet
machine: the load average is printed before and after each benchmark, and results measured while other
processes kept the CPUs busy are marked noisy by the benchmarks themselves.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# name -> weight: its share of the budget, ~1.2x what one run of each needed on a quiet machine (vs_original
# 51 s, per_class_scaling 124 s, visit_overhead 61 s, memory 56 s, embed_cache ~126 s); esc50_scale and
# quality fit their work to their share and run last, so that they get what the others leave
BENCHMARKS = {
    "vs_original": 0.6,
    "overhead": 0.7,
    "per_class_scaling": 1.4,
    "visit_overhead": 0.7,
    "memory": 0.65,
    "embed_cache": 1.6,
    "esc50_scale": 1.3,
    "quality": 1.05,
}
REPEATED = {"vs_original", "overhead", "per_class_scaling", "visit_overhead"}
DEADLINE_ENV = "A2VGEN_BENCH_DEADLINE"
REPEAT_SHARE = 0.7  # no repeat starts after this fraction of a benchmark's share


def load() -> str:
    """The 1-minute load average against the CPU count."""
    return f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"


def run_one(cmd: list[str], env: dict, timeout: float, quiet: bool) -> str:
    """Run ``cmd`` in its own process group; return ``ok``, ``exit N`` or ``TIMED OUT`` (group killed)."""
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL if quiet else None, start_new_session=True)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return "TIMED OUT"
    return "ok" if rc == 0 else f"exit {rc}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes (a few seconds per benchmark)")
    p.add_argument("--repeats", type=int, default=3, help="runs per contender, budget permitting (median reported)")
    p.add_argument("--budget", type=float, default=900.0, help="seconds for all benchmarks together")
    p.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run only these benchmarks")
    args = p.parse_args(argv)
    names = args.only or list(BENCHMARKS)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    end = time.time() + args.budget
    print(f"python {sys.version.split()[0]}, budget {args.budget:.0f} s, load average {load()}", flush=True)
    summary = []
    for i, name in enumerate(names):
        left = max(end - time.time(), 0.0)
        share = left * BENCHMARKS[name] / sum(BENCHMARKS[n] for n in names[i:])
        cmd = [sys.executable, str(HERE / f"{name}.py")]
        if args.smoke:
            cmd.append("--smoke")
        elif name in REPEATED:
            cmd += ["--repeats", str(args.repeats)]
        env[DEADLINE_ENV] = str(time.time() + REPEAT_SHARE * share)
        print(f"\n=== {name} ({' '.join(cmd[1:])}), up to {share:.0f} s, load average {load()}", flush=True)
        start, before = time.perf_counter(), os.getloadavg()[0]
        status = run_one(cmd, env, share, args.smoke) if share >= 1 else "SKIPPED (budget spent)"
        seconds = time.perf_counter() - start
        print(f"=== {name}: {status}, {seconds:.0f} s, load average {load()}", flush=True)
        summary.append((name, status, seconds, before, os.getloadavg()[0]))
    print("\nbenchmark           | status    | seconds | load before | load after")
    for name, status, seconds, before, after in summary:
        print(f"{name:<19} | {status:<9} | {seconds:7.0f} | {before:11.2f} | {after:10.2f}")
    failed = [name for name, status, *_ in summary if status.startswith("exit")]
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
