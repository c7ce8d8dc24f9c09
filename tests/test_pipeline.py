"""The pipeline: config errors before any work, stage skipping, kill -9 resume, and the fast demo."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from rewardlab.cli import main
from rewardlab.pipeline import demo_config, plan_run
from rewardlab.schema import to_json

MICRO = {"name": "t", "seed": 0, "world": {"preset": "micro"}}


def test_config_errors_name_the_key_before_any_work(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**MICRO, "ppo": {"phases": 2, "kl_estimatr": "k1"}}))
    assert main(["run", str(cfg), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "c.yaml.ppo.kl_estimatr: unknown key 'kl_estimatr'" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing was started


@pytest.mark.parametrize("config,match", [
    ({**MICRO, "ppo": {"kl_estimator": "k9"}}, "unknown kl_estimator 'k9'"),
    ({**MICRO, "ppo": {"base": "x"}}, "base is set by the pipeline"),
    ({**MICRO, "diffing": {"alphas": "two"}}, r"config.diffing.alphas"),
    ({**MICRO, "sae": {"relevance_saes": 1}}, "reward relevance needs at least 2 SAEs"),
    ({"seed": 0, "world": None}, "needs either a world or a models section"),
    ({"models": {"base": "gpt2"}}, "models.prompts is required"),
    ({"models": {"base": "gpt2", "prompts": "/nonexistent/p.jsonl"}}, "config.models.prompts: file not found"),
    ({"world": {"preset": "huge"}}, "config.world.preset: unknown world preset 'huge'"),
    ({**MICRO, "ppo": {"value_site": "blocks.1.hook_resid_post"}},
     r"config.ppo.value_site: layer 1 does not exist.*\n.*layers 0..0"),
    ({**MICRO, "ppo": {"eval_samples": 1}}, "eval_samples must be at least 2"),
    ({**MICRO, "ppo": {"batch_size": 32}}, "batch_size 32 is not divisible by minibatch_size 64"),
    ({**MICRO, "probes": {"steer_alphas": [0.05, 0.1]}}, r"steer_alphas must be finite and include 0"),
    ({**MICRO, "probes": {"steer_site": "blocks.5.hook_resid_post"}},
     "config.probes.steer_site: layer 5 does not exist"),
    ({**MICRO, "probes": {}, "sae": {"layers": [3]}}, "config.sae.layers: layer 3 does not exist"),
    ({**MICRO, "probes": {}, "sae": {"k": 0}}, "k and n_top_features must be at least 1"),
    ({**MICRO, "diffing": {"plausibility": 2}}, r"plausibility must be in \[0, 1\], got 2"),
])
def test_config_errors(config, match):
    from rewardlab.errors import InputError

    with pytest.raises(InputError, match=match):
        plan_run(config, "/nonexistent/run")


def test_bundled_demo_configs_are_valid(tmp_path):
    for fast in (False, True):
        plan = plan_run(yaml.safe_load(demo_config(fast).read_text()), tmp_path)
        assert [s.name for s in plan.stages] == ["world", "pairs", "ppo", "sweep", "dpo", "diffing", "probes", "sae",
                                                 "value", "organisms"] + ["dialogue"] * fast  # q8: fast demo only


def test_a_run_folder_has_one_plan_however_its_path_is_spelled(tmp_path, monkeypatch):
    """`runs/demo` and its absolute path must give the same stage fingerprints, or a resumed run
    that names its folder the other way redoes every stage after the world."""
    monkeypatch.chdir(tmp_path)
    config = yaml.safe_load(demo_config(False).read_text())

    def stage_configs(run_dir):  # what a stage's fingerprint hashes besides its inputs' contents
        plan = plan_run(config, run_dir)
        return [(s.name, to_json(s.config), sorted(map(str, s.inputs.values()))) for s in plan.stages]

    relative = stage_configs("runs/demo")
    assert "runs/demo/world/base" in json.dumps(relative)
    assert relative == stage_configs(tmp_path / "runs" / "demo") == stage_configs(tmp_path / "x" / ".." / "runs" / "demo")


def _run(config: Path, out: Path, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rewardlab.cli", "run", str(config), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


@pytest.mark.slow
def test_kill_during_post_training_then_rerun_gives_identical_results(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**MICRO, "ppo": {"phases": 6, "batch_size": 32, "minibatch_size": 16, "eval_samples": 32}}))
    straight = _run(config, tmp_path / "a")
    assert straight.wait(600) == 0, straight.stdout.read()

    killed = _run(config, tmp_path / "b")
    partial = tmp_path / "b" / ".ppo.partial"
    deadline = time.time() + 600
    while not (partial / "metrics.jsonl").is_file() and time.time() < deadline:  # past the first phase
        time.sleep(0.2)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "b" / "ppo").exists() and (tmp_path / "b" / "world" / "manifest.json").is_file()
    resumed = _run(config, tmp_path / "b")
    log = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, log
    assert "[world] done already, skipped" in log
    a, b = (json.loads((tmp_path / r / "results.json").read_text()) for r in ("a", "b"))
    for section in ("world", "ppo"):
        a[section].pop("seconds", None), b[section].pop("seconds", None)
    assert a["ppo"] == b["ppo"] and a["world"] == b["world"]
    metrics = [json.loads(line) for line in (tmp_path / "b" / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert [m["phase"] for m in metrics] == list(range(6))


@pytest.mark.slow
def test_fast_demo_runs_every_stage_and_reruns_identically(fast_demo, capsys):
    out = fast_demo
    results = json.loads((out / "results.json").read_text())
    for section in ("world", "ppo", "sweep", "pairs", "dpo", "implicit_reward", "divergent", "probe", "steering", "sae",
                    "crosscoder", "interp", "reward_relevance", "audit", "params", "organisms", "dialogue", "answers"):
        assert section in results, section
    assert results["probe"]["spearman"]["ci"][0] <= results["probe"]["spearman"]["value"] <= results["probe"]["spearman"]["ci"][1]
    assert all((out / path).is_file() for path in results["artifacts"].values())
    # a second run skips every stage and rewrites identical results; headline numbers print with CI and n
    before = (out / "results.json").read_text()
    assert main(["demo", "--fast", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("done already, skipped") == 11  # the 11 stages of the fast demo, organisms included
    summary = {line.split()[0]: line for line in printed.splitlines() if line.startswith("  ")}
    for row in ("implicit_reward.spearman_true", "probe.spearman", "probe.selectivity", "steering.effect_at_max_alpha",
                "reward_relevance.post_minus_base", "ppo.reward_policy", "probe.versus_baselines.difference"):
        assert re.search(r"-?\d+\.\d{3} \[-?\d+\.\d{3}, -?\d+\.\d{3}\] \(n=\d+", summary[row]), summary[row]
    assert summary["q1-probe"].split()[-1] in ("yes", "no", "inconclusive")
    assert (out / "results.json").read_text() == before


@pytest.mark.slow
def test_a_copied_run_folder_skips_every_stage(fast_demo, tmp_path, capsys):
    copy = tmp_path / "elsewhere" / "demo"
    shutil.copytree(fast_demo, copy)
    assert main(["demo", "--fast", "--out", str(copy)]) == 0
    assert capsys.readouterr().out.count("done already, skipped") == 11
    assert (copy / "results.json").read_text() == (fast_demo / "results.json").read_text()


@pytest.mark.slow
def test_stages_side_by_side_give_the_numbers_of_one_stage_at_a_time(fast_demo, tmp_path, capsys):
    """The fast demo runs DPO beside PPO (`side_by_side`); the same stages again one at a time in this process
    give the same pairs, PPO and DPO numbers, and a companion's bad input fails the run with exit code 2."""
    printed = (fast_demo / "dpo.log").read_text()
    assert "[dpo] running" in printed and "[dpo] finished" in printed  # DPO ran in its own process
    config = yaml.safe_load(demo_config(True).read_text())
    assert config["side_by_side"] is True
    config = {k: config[k] for k in ("name", "seed", "world", "pairs", "ppo", "dpo")} | {"report": False}
    copy = tmp_path / "demo"
    shutil.copytree(fast_demo, copy)
    for stage in ("pairs", "ppo", "dpo"):
        shutil.rmtree(copy / stage)
    path = tmp_path / "one-at-a-time.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["run", str(path), "--out", str(copy)]) == 0
    assert "beside" not in capsys.readouterr().out
    a, b = (json.loads((run / "results.json").read_text()) for run in (fast_demo, copy))
    for section in ("pairs", "ppo", "dpo"):
        a[section].pop("seconds", None), b[section].pop("seconds", None)
        assert a[section] == b[section], section

    for stage in ("ppo", "dpo"):  # DPO beside PPO on a pairs file it cannot read
        shutil.rmtree(copy / stage)
    (copy / "pairs" / "pairs.jsonl").write_text("not json\n")
    path.write_text(yaml.safe_dump(config | {"side_by_side": True}))
    assert main(["run", str(path), "--out", str(copy)]) == 2
    captured = capsys.readouterr()
    assert "[dpo] running beside ppo" in captured.out and "pairs.jsonl" in captured.err
    assert "Traceback" not in captured.err and not (copy / "dpo").exists()


def _models_config(tmp_path, **sections) -> dict:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"prompt {i}"}) + "\n" for i in range(10)))
    return {"seed": 0, "models": {"base": "gpt2", "prompts": str(prompts), "reward": "char:e", "max_new_tokens": 7,
                                  "temperature": 0.8}, **sections}


def test_models_section_fills_stage_defaults(tmp_path):
    from rewardlab.errors import InputError

    plan = plan_run(_models_config(tmp_path, ppo={"temperature": 0.5}, probes={}, diffing={}), tmp_path / "run")
    cfg = {s.name: s.config for s in plan.stages}
    assert list(cfg) == ["prompts", "ppo", "diffing", "probes"]
    ppo = cfg["ppo"]
    assert (ppo.reward, ppo.max_new_tokens, ppo.temperature) == ("char:e", 7, 0.5)  # the section's own key wins
    assert ppo.prompts == str(tmp_path / "run" / "prompts" / "train.jsonl")
    assert cfg["probes"].max_new_tokens == 7
    assert plan.setting.reward == "char:e"
    given = _models_config(tmp_path, ppo={}, probes={})
    given["models"]["post"] = "gpt2-post"
    plan = plan_run(given, tmp_path / "run")  # a given post model: no post-training
    assert plan.models == {"base": "gpt2", "post": "gpt2-post"} and [s.name for s in plan.stages] == ["prompts", "probes"]
    with pytest.raises(InputError, match="need a post-trained model"):
        plan_run(_models_config(tmp_path, ppo=None, probes={}), tmp_path / "run")


def test_split_heldout_holds_out_whole_prompts_deterministically():
    from rewardlab.stages.prompts import split_heldout

    rows = [f"p{i % 10}" for i in range(30)]
    train, heldout = split_heldout(rows, 0.2, seed=3)
    assert len(heldout) == 2 and len(train) == 24 and not set(train) & set(heldout)
    assert split_heldout(list(reversed(rows)), 0.2, seed=3)[1] == heldout  # depends on the set, not the order
    assert split_heldout(["a", "b"], 0.9, seed=0)[0] in (["a"], ["b"])  # one prompt is always left to train on


def test_a_stage_that_sets_threads_does_not_change_later_stages(tmp_path, monkeypatch):
    """PPO and DPO set torch's thread count; later stages must see the count a resumed run would."""
    import dataclasses
    import types

    import torch

    from rewardlab import pipeline
    from rewardlab.stages.common import PlannedStage, RunConfig

    seen = []

    @dataclasses.dataclass
    class Nothing:
        pass

    def stage(name, body):
        return types.SimpleNamespace(NAME=name, ARTIFACTS={}, Results=Nothing, run=lambda cfg, ctx: body() or Nothing())

    monkeypatch.setitem(pipeline.REGISTRY, "a", stage("a", lambda: torch.set_num_threads(1)))
    monkeypatch.setitem(pipeline.REGISTRY, "b", stage("b", lambda: seen.append(torch.get_num_threads())))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        stages = [PlannedStage("a", {"x": 1}, {}), PlannedStage("b", {"x": 2}, {})]
        pipeline.run_plan(pipeline.Plan(tmp_path, RunConfig(world=None, ppo=None, report=False), stages, {}),
                          log=lambda _: None)
        assert seen == [2] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
