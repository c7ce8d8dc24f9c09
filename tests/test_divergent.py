import math

import pytest
import torch

from rewardlab.diff.divergent import DivergentConfig, divergent_logits, sample_divergent
from rewardlab.diff.logprobs import sequence_logprobs
from rewardlab.errors import InputError
from rewardlab.sampling import generate
from rewardlab.text import Encoded
from tiny_lm import PROMPTS, tiny_pair


def test_divergent_logits_formula_and_plausibility_mask():
    post = torch.tensor([[2.0, 1.0, 0.0, -3.0]])
    base = torch.tensor([[1.0, 1.5, 0.0, -3.0]])
    out = divergent_logits(post, base, alpha=2.0, plausibility=0.0)
    assert torch.allclose(out, post + 2 * (post - base))
    masked = divergent_logits(post, base, alpha=2.0, plausibility=0.3)
    p = post.softmax(-1)[0]
    keep = p >= 0.3 * p.max()
    assert torch.equal(torch.isfinite(masked[0]), keep)
    assert torch.allclose(masked[0][keep], out[0][keep])


@pytest.mark.parametrize("alpha,which", [(0.0, "post"), (-1.0, "base")])
def test_alpha_zero_samples_post_and_alpha_minus_one_samples_base(alpha, which):
    base, post, tok = tiny_pair(scale=0.3)
    cfg = DivergentConfig(alphas=(alpha,), plausibility=0.0, max_new_tokens=8, num_samples=3, seed=5)
    rows = sample_divergent(base, post, tok, PROMPTS, cfg)
    ref = generate(post if which == "post" else base, tok, [p for p in PROMPTS for _ in range(3)], max_new_tokens=8,
                   generator=torch.Generator().manual_seed(5), batch_size=64)
    assert [r["token_ids"] for r in rows] == [s.completion_ids for s in ref]
    assert [r["sample"] for r in rows[:6]] == [0, 1, 2, 0, 1, 2]


def test_logged_logprobs_equal_rescoring_and_implicit_reward_is_their_difference():
    base, post, tok = tiny_pair(scale=0.3)
    cfg = DivergentConfig(alphas=(-0.5, 2.0), plausibility=0.1, temperature=0.9, top_p=0.95, max_new_tokens=8,
                          num_samples=1, batch_size=3)
    rows = sample_divergent(base, post, tok, PROMPTS, cfg)
    assert len(rows) == 2 * len(PROMPTS) and {r["alpha"] for r in rows} == {-0.5, 2.0}
    encoded = [Encoded(tok(r["prompt"])["input_ids"] + r["token_ids"], len(tok(r["prompt"])["input_ids"]))
               for r in rows]
    for model, key in ((post, "logp_post"), (base, "logp_base")):
        for r, lp in zip(rows, sequence_logprobs(model, encoded, batch_size=3)):
            assert r[key] == pytest.approx(lp.tolist(), abs=1e-5)
    for r in rows:
        assert len(r["logp_post"]) == len(r["logp_sample"]) == r["n_tokens"] == len(r["tokens"])
        assert r["implicit_reward"] == pytest.approx(sum(r["logp_post"]) - sum(r["logp_base"]), abs=1e-9)
        assert all(math.isfinite(x) for x in r["logp_sample"])  # sampled tokens were plausible
    assert rows == sample_divergent(base, post, tok, PROMPTS, cfg)  # deterministic


def test_bad_plausibility_is_an_input_error():
    base, post, tok = tiny_pair()
    with pytest.raises(InputError, match="plausibility"):
        sample_divergent(base, post, tok, PROMPTS, DivergentConfig(plausibility=1.5))


def test_sample_divergent_cli(tmp_path):
    import json

    from rewardlab.cli import main
    from tiny_lm import save_pair, write_records

    base, post = save_pair(tmp_path, scale=0.3)
    out = tmp_path / "s.jsonl"
    assert main(["sample", "divergent", "--base", base, "--post", post, "--prompts", write_records(tmp_path / "p.jsonl"),
                 "--alphas=-0.5,0,2", "--max-new-tokens", "5", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["alpha"] for r in rows] == [-0.5] * 4 + [0.0] * 4 + [2.0] * 4
    with pytest.raises(SystemExit) as exit_:
        main(["sample", "divergent", "--base", base, "--post", post, "--prompts", str(tmp_path / "p.jsonl"),
              "--alphas", "x", "--out", str(out)])
    assert exit_.value.code == 2


@pytest.mark.slow
def test_diffing_stage_sections_on_a_fake_world(tmp_path):
    import json

    from rewardlab.stages import diffing
    from rewardlab.stages.common import Context
    from rewardlab.stages.registry import REGISTRY
    from tiny_lm import save_pair

    base, post = save_pair(tmp_path, scale=0.3)
    (tmp_path / "world.json").write_text(json.dumps({"generation": {"max_new_tokens": 6}}))
    for name in ("prompts.jsonl", "prompts_heldout.jsonl"):
        (tmp_path / name).write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    (tmp_path / "run" / "policy").mkdir(parents=True)
    for f in (tmp_path / "post").iterdir():
        (tmp_path / "run" / "policy" / f.name).write_bytes(f.read_bytes())
    cfg = diffing.Config(n_samples=12, n_divergent=4, n_audit_sources=10, batch_size=8)
    (tmp_path / "out").mkdir()
    ctx = Context(tmp_path, tmp_path / "out", 0, {"base": str(base), "ppo": str(tmp_path / "run"), "dpo": str(post)},
                  None, REGISTRY)
    out = diffing.run(cfg, ctx)
    fits = out.implicit_reward.by_policy
    assert set(fits) == {"ppo", "dpo"} and fits["ppo"].spearman_true.n == 12 and fits["ppo"].spearman_true.n_groups == 4
    assert out.implicit_reward.policy == "ppo" and out.implicit_reward.spearman_true == fits["ppo"].spearman_true
    assert out.divergent.alphas == [-0.5, 0.0, 2.0] and len(out.divergent.grammatical_rate) == 3
    assert isinstance(out.divergent.reward_increases_with_alpha_ci_disjoint, bool)
    assert out.params.top_layers[0] == "blocks.1" and out.params.policy == "ppo"
    assert out.audit.accuracy.value >= 0.95 and out.audit.reward_models["dpo_implicit"].ref_model.endswith("base")
    assert (tmp_path / "out" / "divergent.jsonl").is_file() and (tmp_path / "out" / "params.csv").is_file()
