"""rewardlab.heap: glibc's mmap threshold fixed from a config, and what it changes (freed activation-sized
blocks go back to the system), measured on the process's resident memory in a fresh interpreter."""

import subprocess
import sys

import pytest

from rewardlab.heap import MAX_MMAP_THRESHOLD_KIB, fix_mmap_threshold, glibc_mallopt
from rewardlab.rl.config import DPOTrainConfig, PPOConfig
from rewardlab.config import RUNTIME_SETTINGS
from rewardlab.errors import InputError

needs_glibc = pytest.mark.skipif(glibc_mallopt() is None, reason="the C library is not glibc")

# 64 blocks of 3 MiB after 4 MiB blocks were freed (which raises glibc's dynamic threshold to 4 MiB);
# every other block is freed, so the freed ones are holes that glibc cannot trim off the heap's top.
FREED_HOLES = """
import sys, torch
from rewardlab.heap import fix_mmap_threshold
if sys.argv[1] == "fixed":
    assert fix_mmap_threshold(128)
def resident():
    import resource
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
warm = [torch.ones(2**20) for _ in range(8)]
del warm
blocks = [torch.ones(3 * 2**18) for _ in range(64)]
before = resident()
del blocks[::2]
print((before - resident()) / 2**20)
"""


def _returned_mib(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", FREED_HOLES, mode], capture_output=True, text=True, check=True)
    return float(out.stdout)


@needs_glibc
def test_fixed_threshold_returns_freed_blocks_to_the_system():
    # 32 freed blocks of 3 MiB: kept resident under glibc's dynamic threshold, returned when it is fixed
    assert _returned_mib("dynamic") < 8
    assert _returned_mib("fixed") > 90


@needs_glibc
def test_fix_accepts_glibc_range_and_refuses_outside():
    accepted = subprocess.run([sys.executable, "-c", "from rewardlab.heap import fix_mmap_threshold as fix, "
                               "MAX_MMAP_THRESHOLD_KIB as most; print(fix(1), fix(most))"],  # not in this process
                              capture_output=True, text=True, check=True).stdout.split()
    assert accepted == ["True", "True"]
    for kib in (0, MAX_MMAP_THRESHOLD_KIB + 1):
        with pytest.raises(ValueError, match="mmap threshold"):
            fix_mmap_threshold(kib)


@pytest.mark.parametrize("config", [PPOConfig, DPOTrainConfig])
def test_config_checks_the_threshold_and_keeps_it_out_of_fingerprints(config):
    assert "mmap_threshold_kib" in RUNTIME_SETTINGS  # a run resumes with another setting
    with pytest.raises(InputError, match="mmap_threshold_kib must be 1 to 32768, got 0"):
        config(base="B", pairs="P", mmap_threshold_kib=0).validate() if config is DPOTrainConfig else \
            config(base="B", mmap_threshold_kib=0).validate()
