import pytest
import torch

from rewardlab.diff.kl import KLConfig, token_kl
from tiny_lm import COMPLETIONS, PROMPTS, tiny_pair


def _full_logp(model, tok, prompt, completion):
    p = tok(prompt)["input_ids"]
    c = tok(completion, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = model(input_ids=torch.tensor([p + c])).logits[0].double().log_softmax(-1)
    return logp[len(p) - 1:len(p) + len(c) - 1]


def test_kl_matches_torch_and_mining_matches_brute_force():
    base, post, tok = tiny_pair(scale=0.2)
    summary, rows = token_kl(base, post, tok, PROMPTS, COMPLETIONS, KLConfig(batch_size=3, top_positions=5, top_tokens=3))
    diffs = []
    for row, p, c in zip(rows, PROMPTS, COMPLETIONS):
        lp, lb = _full_logp(post, tok, p, c), _full_logp(base, tok, p, c)
        ref = torch.nn.functional.kl_div(lb, lp, log_target=True, reduction="none").sum(-1)
        assert row["kl"] == pytest.approx(ref.tolist(), abs=1e-5)
        assert row["kl_sum"] == pytest.approx(float(ref.sum()), abs=1e-5)
        diffs.append(lp - lb)
    all_kl = sorted((x for r in rows for x in r["kl"]), reverse=True)
    assert [t["kl"] for t in summary["top_positions"]] == pytest.approx(all_kl[:5])
    top = summary["top_positions"][0]
    assert top["token"] in tok.get_vocab() and isinstance(top["context"], str)
    mean_diff = torch.cat(diffs).mean(0)
    best = tok.convert_ids_to_tokens(int(mean_diff.argmax()))
    worst = tok.convert_ids_to_tokens(int(mean_diff.argmin()))
    assert summary["promoted"][0]["token"] == best and summary["demoted"][0]["token"] == worst
    assert summary["promoted"][0]["mean_log_ratio"] == pytest.approx(float(mean_diff.max()), abs=1e-5)
    assert summary["n_tokens"] == sum(r["n_tokens"] for r in rows)
    assert summary["kl_per_token"]["ci"][0] <= summary["kl_per_token"]["value"] <= summary["kl_per_token"]["ci"][1]


def test_identical_models_have_zero_kl():
    base, _, tok = tiny_pair()
    summary, rows = token_kl(base, base, tok, PROMPTS, COMPLETIONS)
    assert all(x == 0.0 for r in rows for x in r["kl"])
    assert summary["kl_per_sequence"]["value"] == 0.0


def test_all_empty_completions_are_refused():
    from rewardlab.errors import InputError

    base, _, tok = tiny_pair()
    with pytest.raises(InputError, match="all 2 completions are empty"):
        token_kl(base, base, tok, PROMPTS[:2], ["", ""])


def test_diff_kl_cli(tmp_path):
    import json

    from rewardlab.cli import main
    from tiny_lm import save_pair, write_records

    base, post = save_pair(tmp_path)
    out = tmp_path / "kl"
    assert main(["diff", "kl", "--base", base, "--post", post, "--in", write_records(tmp_path / "r.jsonl"),
                 "--out", str(out), "--top-positions", "3", "--top-tokens", "3"]) == 0
    summary = json.loads((out / "kl.json").read_text())
    assert len(summary["promoted"]) == 3 and summary["post"] == "post"
    assert len((out / "kl_tokens.jsonl").read_text().splitlines()) == len(PROMPTS)
