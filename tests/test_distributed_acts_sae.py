"""Activation caching and SAE training on two CPU processes (gloo), launched with torchrun, which Accelerate picks
up from the environment (`accelerate launch --num_processes N` on GPUs is the same): the same cache as one
process, file for file, each process writing its own shards; the same SAE weights as one process within float
tolerance, for every architecture, with BatchTopK's cut, AuxK and uneven batch parts in play.

Run as a script (`torchrun ... tests/test_distributed_acts_sae.py WORKDIR`) this file is the worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from rewardlab.cli import main
from rewardlab.io import read_json, save_tensors, write_json, write_jsonl
from rewardlab.sae.crosscoder import Crosscoder
from rewardlab.sae.model import SAEConfig
from rewardlab.sae.train import TrainConfig, train_sae

RECORDS = [{"prompt": p, "completion": c, "reward": float(i)} for i, (p, c) in enumerate(
    [("the movie was", "good ."), ("the plot is", "very boring and bad"), ("a film", ""), ("the acting was", "fun"),
     ("the movie is", "a great film ."), ("a plot", "was awful"), ("the film was very", "good and fun ."),
     ("acting", "is bad"), ("the movie", "was very very good"), ("a film was", "boring ."), ("the plot was", "fun"),
     ("the acting is", "great and good")])]
CACHE_ARGS = ["--sites", "blocks.0.hook_resid_post,blocks.1.hook_mlp_out", "--positions",
              "last_completion,mean_completion,-1,tokens", "--batch-size", "3", "--shard-rows", "4"]
TRAIN = TrainConfig(batch_size=45, n_tokens=45 * 40, lr=3e-3, dead_window=90, log_every=5, progress=False)
SAES = {  # name: (SAEConfig, train_sae keyword arguments); 45 tokens per batch split 23 + 22
    "batchtopk": (SAEConfig(16, 64, k=4), {}),
    "topk": (SAEConfig(16, 64, "topk", k=4), {}),
    "relu": (SAEConfig(16, 64, "relu"), {}),
    "diffdict": (SAEConfig(16, 64, k=4), {"targets": True}),
    "crosscoder": (SAEConfig(32, 64, k=4), {"model_cls": Crosscoder}),
}


def _sae_data() -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse sums of 24 random directions plus noise, [400, 16], and a linear map of them (targets)."""
    g = torch.Generator().manual_seed(0)
    codes = torch.rand(400, 24, generator=g) * (torch.rand(400, 24, generator=g) < 0.15)
    x = codes @ torch.randn(24, 16, generator=g) + 0.05 * torch.randn(400, 16, generator=g) + 0.5
    return x, x @ torch.randn(16, 16, generator=g) * 0.5


def _train_all(out: Path, tag: str) -> None:
    x, y = _sae_data()
    for name, (cfg, kw) in SAES.items():
        acts = torch.cat([x, y], 1) if "model_cls" in kw else x
        kw = {**kw, "targets": y} if "targets" in kw else kw
        result = train_sae(acts, cfg, TRAIN, **kw)
        save_tensors(out / f"sae-{name}-{tag}.safetensors", result.sae.state_dict())
        write_json(out / f"history-{name}-{tag}.json", result.history)


def _worker(work: Path) -> None:
    """One of the launched processes: cache through the CLI (logging the shard files it writes), then train."""
    import rewardlab.acts
    from rewardlab import distributed

    torch.set_num_threads(1)
    written, save = [], rewardlab.acts.save_tensors
    rewardlab.acts.save_tensors = lambda path, *a, **k: (written.append(Path(path).name), save(path, *a, **k))
    code = main(["acts", "cache", "--model", str(work / "model"), "--in", str(work / "records.jsonl"), *CACHE_ARGS,
                 "--out", str(work / "acts-2")])
    rank, world = distributed.rank_and_world()
    assert code == 0 and world == 2
    write_json(work / f"written-{rank}.json", written)
    _train_all(work, f"2-{rank}")


def _shards(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    out = {}
    for name in read_json(folder / "manifest.json")["shards"]:
        with safe_open(str(folder / name), framework="pt") as f:
            out[name] = {k: f.get_tensor(k) for k in f.keys()}
    return out


@pytest.mark.slow
def test_two_processes_cache_and_train_like_one(tmp_path, one_thread):
    from test_ppo import make_tiny_lm

    make_tiny_lm(tmp_path / "model")
    write_jsonl(tmp_path / "records.jsonl", RECORDS)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           __file__, str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert main(["acts", "cache", "--model", str(tmp_path / "model"), "--in", str(tmp_path / "records.jsonl"),
                 *CACHE_ARGS, "--out", str(tmp_path / "acts-1")]) == 0
    _train_all(tmp_path, "1")

    # caching: process p wrote shards p, p + 2, ...; the folders are the same, tensor for tensor
    assert [read_json(tmp_path / f"written-{r}.json") for r in (0, 1)] == [
        ["shard-00000.safetensors", "shard-00002.safetensors"], ["shard-00001.safetensors"]]
    assert read_json(tmp_path / "acts-2" / "manifest.json") == read_json(tmp_path / "acts-1" / "manifest.json")
    one, two = _shards(tmp_path / "acts-1"), _shards(tmp_path / "acts-2")
    assert one.keys() == two.keys() and all(one[s].keys() == two[s].keys() for s in one)
    for s in one:
        for k in one[s]:
            assert torch.equal(one[s][k], two[s][k]), (s, k)

    # SAE training: both processes hold the same weights, those of one process within float tolerance
    for name in SAES:
        ref, w0, w1 = (load_file(str(tmp_path / f"sae-{name}-{t}.safetensors")) for t in ("1", "2-0", "2-1"))
        assert ref.keys() == w0.keys()
        for k in ref:
            assert torch.equal(w0[k], w1[k]), (name, k)
            torch.testing.assert_close(w0[k], ref[k], atol=1e-5, rtol=0, msg=f"{name} {k}")
        h1, h2 = (json.loads((tmp_path / f"history-{name}-{t}.json").read_text()) for t in ("1", "2-0"))
        assert [(h["step"], h["tokens"], h["n_dead"]) for h in h1] == [(h["step"], h["tokens"], h["n_dead"]) for h in h2]
        for a, b in zip(h1, h2):
            assert a["mse"] == pytest.approx(b["mse"], rel=1e-4) and a["l0"] == pytest.approx(b["l0"], rel=1e-4)
    batchtopk = json.loads((tmp_path / "history-batchtopk-1.json").read_text())
    assert max(h["n_dead"] for h in batchtopk) > 0  # AuxK (global dead counts) was in play
    assert float(load_file(str(tmp_path / "sae-batchtopk-1.safetensors"))["threshold"]) > 0


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
