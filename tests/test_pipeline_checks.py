"""Pipeline checks: the value-head site conflict is caught at config check; runtime settings (threads)
stay out of every resume fingerprint, so a run resumes with another thread count."""

import dataclasses

import pytest
import torch

from rewardlab.errors import InputError
from rewardlab.pipeline import fingerprinted_config, plan_run

MICRO = {"name": "t", "seed": 0, "world": {"preset": "micro"}}


@pytest.mark.parametrize("probes,match", [
    ({"sites": "blocks.0.hook_resid_post"}, r"probes.sites: probes.sites leaves out ln_final.hook_out"),
    ({"positions": ["mean_completion"]}, r"probes.positions: probes.positions leaves out last_completion"),
])
def test_probe_sites_without_the_value_heads_site_stop_at_config_check(probes, match):
    with pytest.raises(InputError, match=match):
        plan_run({**MICRO, "probes": probes}, "/nonexistent/run")


def test_probe_sites_with_the_value_heads_site_plan():
    plan = plan_run({**MICRO, "probes": {"sites": "blocks.0.hook_resid_post,ln_final.hook_out"}}, "/x")
    assert "probes" in [s.name for s in plan.stages]
    moved = {**MICRO, "ppo": {"value_site": "blocks.0.hook_resid_post"}, "probes": {"sites": "blocks.0.hook_resid_post"}}
    assert "probes" in [s.name for s in plan_run(moved, "/x").stages]
    no_ppo = {**MICRO, "ppo": None, "dpo": {}, "pairs": {}, "probes": {"sites": "blocks.0.hook_resid_post"}}
    assert "probes" in [s.name for s in plan_run(no_ppo, "/x").stages]  # no value head: any sites


def test_threads_stay_out_of_the_stage_fingerprints(tmp_path):
    def fingerprints(threads):
        plan = plan_run({**MICRO, "ppo": {"threads": threads}, "pairs": {}, "dpo": {"threads": threads}}, tmp_path)
        return {s.name: fingerprinted_config(plan, s) for s in plan.stages}

    one, two = fingerprints(1), fingerprints(2)
    assert one == two and "threads" not in one["ppo"]["config"] and "lr" in one["ppo"]["config"]


def test_ppo_resumes_with_another_thread_count(tmp_path):
    from test_ppo import tiny_config

    from rewardlab.io import read_jsonl
    from rewardlab.rl.ppo import train_ppo

    cfg = tiny_config(tmp_path, phases=2, eval_samples=4, threads=1, keep_checkpoint=True)  # resumed below
    before = torch.get_num_threads()
    try:
        train_ppo(dataclasses.replace(cfg, phases=1), tmp_path / "out")  # "interrupted" after phase 1
        first = read_jsonl(tmp_path / "out" / "metrics.jsonl")
        train_ppo(dataclasses.replace(cfg, threads=2), tmp_path / "out")
    finally:
        torch.set_num_threads(before)
    rows = read_jsonl(tmp_path / "out" / "metrics.jsonl")
    assert [r["phase"] for r in rows] == [0, 1] and rows[0] == first[0]  # phase 0 kept, not re-run
    with pytest.raises(InputError, match="different config"):  # a setting that changes the numbers still refuses
        train_ppo(dataclasses.replace(cfg, phases=3, lr=5e-4), tmp_path / "out")


def test_a_given_post_models_ppo_metrics_are_found(tmp_path):
    from rewardlab.io import write_jsonl
    from rewardlab.pipeline import given_post_metrics

    (tmp_path / "ppo" / "policy").mkdir(parents=True)
    write_jsonl(tmp_path / "ppo" / "metrics.jsonl", [{"phase": 0, "reward_mean": 0.1, "kl_exact": 0.0}])
    write_jsonl(tmp_path / "dpo" / "metrics.jsonl", [{"loss": 0.69, "epoch": 1}])  # TRL's log: not PPO's
    expected = (tmp_path / "ppo" / "metrics.jsonl").resolve()
    assert given_post_metrics(str(tmp_path / "ppo")) == given_post_metrics(str(tmp_path / "ppo" / "policy")) == expected
    assert given_post_metrics(str(tmp_path / "dpo")) is None and given_post_metrics("gpt2") is None
