"""Every benchmark runs with ``--smoke`` in this process (importing Lightning per subprocess costs ~5 s)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH_DIR))

from run_all import BENCHMARKS  # noqa: E402


@pytest.fixture(autouse=True)
def torch_threads_restored():
    """Benchmarks set 2 threads; later tests compare in-process results with 1-thread subprocesses
    (``test_faults``), and reductions differ in their last bits between thread counts."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_smoke_prints_a_table(name, capsys) -> None:
    bench = importlib.import_module(name)
    assert bench.main(["--smoke"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert any(set(line) <= {"-", "+"} and "+" in line for line in lines), out  # a table header rule
    assert sum(" | " in line for line in lines) >= 3, out  # header and at least two rows


def test_run_all_lists_every_benchmark_script() -> None:
    # flower_deployment starts a SuperLink and SuperNodes and takes minutes: run by hand, not by run_all or CI
    scripts = {p.stem for p in BENCH_DIR.glob("*.py") if not p.stem.startswith("_")} - {"run_all", "flower_deployment"}
    assert scripts == set(BENCHMARKS)
