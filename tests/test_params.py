import csv
import json

import numpy as np
import pytest
import torch

from rewardlab.diff.params import MIN_EXCESS, block_scores, param_group, parameter_divergence, write_divergence
from rewardlab.errors import InputError
from tiny_lm import tiny_lm, tiny_pair


def test_param_group_names():
    assert param_group("transformer.h.3.attn.c_attn.weight") == "blocks.3"
    assert param_group("model.layers.12.mlp.up_proj.weight") == "blocks.12"
    assert param_group("gpt_neox.layers.0.attention.dense.bias") == "blocks.0"
    assert param_group("transformer.wte.weight") == "transformer.wte"


def test_divergence_matches_brute_force_and_ranks_the_changed_block_first(tmp_path):
    base, post, _ = tiny_pair(scale=0.05, layer=1)
    div = parameter_divergence(base, post)
    rows = div.layers
    assert rows[0].group == "blocks.1" and rows[0].rank == 1
    by = {r.group: r for r in rows}
    assert by["blocks.0"].tensor_norm_sum == 0.0 and by["blocks.0"].relative_change == 0.0
    diffs = [(p2.detach().double() - p1.detach().double(), p1.detach().double()) for (n, p1), (_, p2)
             in zip(base.named_parameters(), post.named_parameters()) if ".h.1." in n]
    assert by["blocks.1"].tensor_norm_sum == pytest.approx(sum(float(d.norm()) for d, _ in diffs), rel=1e-12)
    flat = torch.cat([d.flatten() for d, _ in diffs])
    assert by["blocks.1"].l2 == pytest.approx(float(flat.norm()), rel=1e-12)
    assert by["blocks.1"].relative_change == pytest.approx(
        float(flat.norm() / torch.cat([b.flatten() for _, b in diffs]).norm()), rel=1e-12)
    assert by["blocks.1"].n_params == flat.numel()

    # the only changed block stands out: score 2 (twice the mean block) above the permutation floor
    assert by["blocks.1"].score == pytest.approx(2.0) and by["blocks.0"].score == 0.0
    assert div.standing_out == ["blocks.1"] and by["blocks.1"].stands_out and not by["blocks.0"].stands_out
    assert div.threshold == max(div.noise_floor, 1 + MIN_EXCESS) and div.noise_floor < 2
    assert div.statement.startswith("blocks.1 stands out")
    summary = write_divergence(div, tmp_path, "base", "post")
    assert summary["top_blocks"][0] == "blocks.1" and summary["standing_out"] == ["blocks.1"]
    assert json.loads((tmp_path / "params.json").read_text())["layers"][0]["group"] == "blocks.1"
    with open(tmp_path / "params.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)


def test_mismatched_architectures_are_an_input_error():
    with pytest.raises(InputError, match="different parameters"):
        parameter_divergence(tiny_lm(n_layer=2), tiny_lm(n_layer=3))


def test_diff_params_cli(tmp_path, capsys):
    from rewardlab.cli import main
    from tiny_lm import save_pair

    base, post = save_pair(tmp_path)
    assert main(["diff", "params", "--base", base, "--post", post, "--out", str(tmp_path / "d")]) == 0
    assert "blocks.1" in capsys.readouterr().out
    assert json.loads((tmp_path / "d" / "params.json").read_text())["top_blocks"][0] == "blocks.1"
    assert (tmp_path / "d" / "params.png").stat().st_size > 1000


def perturbed(n_layer: int, scales: dict[int, float], seed: int = 1):
    """(base, post): post = base + scales[L] * N(0, 1) noise on every tensor of block L."""
    base, post = tiny_lm(0, n_layer=n_layer), tiny_lm(0, n_layer=n_layer)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in post.named_parameters():
            for layer, scale in scales.items():
                if f".h.{layer}." in name:
                    p.add_(scale * torch.randn(p.shape, generator=g))
    return base, post


def test_no_layer_stands_out_when_every_block_changed_alike():
    base, post = perturbed(6, {L: 0.05 for L in range(6)})
    div = parameter_divergence(base, post)
    blocks = [r for r in div.layers if r.group.startswith("blocks.")]
    assert div.standing_out == [] and not any(r.stands_out for r in blocks)
    assert max(r.score for r in blocks) < div.threshold
    assert div.statement.startswith("no layer stands out")
    # the ranking still names a "most changed" block: only the floor says it means nothing
    assert blocks[0].rank == 1
    # one block changed 3x as much stands out
    base, post = perturbed(6, {**{L: 0.05 for L in range(6)}, 4: 0.15})
    assert parameter_divergence(base, post).standing_out == ["blocks.4"]


def test_block_scores_match_brute_force_and_the_permutation_floor():
    rng = np.random.default_rng(0)
    m = rng.uniform(0.5, 1.5, size=(5, 4))  # [kinds, blocks]
    norms = {(b, f"k{k}"): m[k, b] for k in range(5) for b in range(4)}
    scores, floor = block_scores(norms, n_perm=2000, seed=3)
    expected = (m / m.mean(1, keepdims=True)).mean(0)
    assert [scores[b] for b in range(4)] == pytest.approx(expected.tolist())
    # the floor by brute force: permute each kind among the blocks, take the top block score
    g = np.random.default_rng(7)
    ratios = m / m.mean(1, keepdims=True)
    tops = [np.stack([g.permutation(row) for row in ratios]).mean(0).max() for _ in range(4000)]
    assert floor == pytest.approx(np.quantile(tops, 0.95), abs=0.02)
    assert block_scores({(0, "k"): 1.0}, n_perm=10)[1] is None  # one block: nothing to compare
