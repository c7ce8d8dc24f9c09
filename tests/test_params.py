import csv
import json

import pytest
import torch

from rewardlab.diff.params import param_group, parameter_divergence, write_divergence
from rewardlab.errors import InputError
from tiny_lm import tiny_lm, tiny_pair


def test_param_group_names():
    assert param_group("transformer.h.3.attn.c_attn.weight") == "blocks.3"
    assert param_group("model.layers.12.mlp.up_proj.weight") == "blocks.12"
    assert param_group("gpt_neox.layers.0.attention.dense.bias") == "blocks.0"
    assert param_group("transformer.wte.weight") == "transformer.wte"


def test_divergence_matches_brute_force_and_ranks_the_changed_block_first(tmp_path):
    base, post, _ = tiny_pair(scale=0.05, layer=1)
    rows = parameter_divergence(base, post)
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

    summary = write_divergence(rows, tmp_path, "base", "post")
    assert summary["top_blocks"][0] == "blocks.1"
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
