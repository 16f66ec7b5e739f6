"""Every benchmark runs with ``--smoke`` in this process (importing Lightning per subprocess costs ~5 s)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH_DIR))

from run_all import BENCHMARKS  # noqa: E402


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
