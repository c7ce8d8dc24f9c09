"""PPO on two CPU processes (gloo), launched with torchrun, which Accelerate picks up from the environment
(`accelerate launch --cpu` starts a single process; on GPUs `accelerate launch --num_processes N` is the same)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rewardlab.io import read_json, read_jsonl
from test_ppo import make_prompts, make_tiny_lm


@pytest.mark.slow
def test_ppo_two_cpu_processes(tmp_path):
    base = make_tiny_lm(tmp_path / "base")
    prompts = make_prompts(tmp_path / "prompts.jsonl")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "rewardlab.cli", "train", "ppo",
           "--base", base, "--prompts", prompts, "--out", str(tmp_path / "out"), "--phases", "2",
           "--batch-size", "8", "--minibatch-size", "2", "--ppo-epochs", "1", "--max-new-tokens", "5",
           "--eval-samples", "8", "--lr", "1e-3", "--keep-checkpoint"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = read_jsonl(tmp_path / "out" / "metrics.jsonl")
    assert [m["phase"] for m in metrics] == [0, 1]
    assert all(m["first_ratio_max_dev"] <= 1e-4 for m in metrics)
    summary = read_json(tmp_path / "out" / "summary.json")
    assert summary["processes"] == 2 and summary["phases"] == 2 and (tmp_path / "out" / "policy" / "model.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "out" / "checkpoint").glob("rng_*")) == ["rng_0.safetensors",
                                                                                        "rng_1.safetensors"]
