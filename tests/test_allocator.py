"""``reuse_freed_memory``: a freed large tensor's memory stays in the process for the next step, instead of
going back to the system (and being page-faulted in again) as with glibc's defaults."""

import platform
import subprocess
import sys

import pytest

from a2vgen.federation import FederatedTrainer

CHILD = """
import sys, torch
from a2vgen.allocator import reuse_freed_memory

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096

if sys.argv[1] == "on":
    assert reuse_freed_memory()
before = rss()
block = torch.ones(4 * 2**20)  # 16 MiB, every page touched
held = rss()
del block
print((held - before) / 2**20, (held - rss()) / 2**20)
"""

glibc = pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc settings"
)


def grown_and_given_back(setting: str) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", CHILD, setting], capture_output=True, text=True, check=True)
    grown, given_back = map(float, out.stdout.split())
    return grown, given_back


@glibc
def test_freed_memory_stays_in_the_process_for_reuse():
    grown, given_back = grown_and_given_back("off")
    assert grown >= 15
    if given_back < 15:  # glibc raises its threshold as large blocks are freed: importing torch may have
        pytest.skip("glibc's defaults already keep a 16 MiB block in this environment: nothing to compare")
    grown, given_back = grown_and_given_back("on")
    assert grown >= 15 and given_back < 1  # kept on the heap for the next allocation


def test_the_trainer_applies_it_unless_told_not_to(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr("a2vgen.allocator.reuse_freed_memory", lambda: calls.append(1) or True)
    FederatedTrainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False, reuse_freed_memory=False)
    assert not calls
    FederatedTrainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    assert calls == [1]
