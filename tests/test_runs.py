import json

from rewardlab.runs import Stage, hash_path


def test_stage_commit_skip_and_rerun_on_change(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n')
    stage = Stage(tmp_path / "run", "score", config={"beta": 0.1}, inputs={"data": data}, seed=0)
    assert not stage.done()
    (stage.work / "out.json").write_text("{}")
    assert not (tmp_path / "run" / "score").exists()  # nothing visible before commit
    stage.commit({"n": 1})
    manifest = json.loads((tmp_path / "run" / "score" / "manifest.json").read_text())
    assert manifest["config"] == {"beta": 0.1} and manifest["n"] == 1 and "torch" in manifest["versions"]
    assert Stage(tmp_path / "run", "score", config={"beta": 0.1}, inputs={"data": data}, seed=0).done()
    assert not Stage(tmp_path / "run", "score", config={"beta": 0.2}, inputs={"data": data}, seed=0).done()
    data.write_text('{"prompt": "a", "completion": "c"}\n')
    assert not Stage(tmp_path / "run", "score", config={"beta": 0.1}, inputs={"data": data}, seed=0).done()


def test_partial_work_is_resumed_only_for_the_same_config(tmp_path):
    s1 = Stage(tmp_path, "ppo", config={"lr": 1})
    (s1.work / "checkpoint.safetensors").write_text("x")
    assert (Stage(tmp_path, "ppo", config={"lr": 1}).work / "checkpoint.safetensors").exists()
    assert not (Stage(tmp_path, "ppo", config={"lr": 2}).work / "checkpoint.safetensors").exists()


def test_hash_of_a_stage_folder_is_its_fingerprint(tmp_path):
    s = Stage(tmp_path, "a", config={"k": 1})
    s.commit()
    assert hash_path(tmp_path / "a") == "stage:" + s.fingerprint
    assert hash_path("gpt2") == "name:gpt2"


def test_a_moved_run_folder_keeps_its_fingerprints(tmp_path):
    """Paths inside the run folder are hashed from the folder, so a copied or moved run skips its finished
    stages; paths outside it, and the folder's own name as a prefix of another folder, still count."""
    def stage(run, paths):
        run = tmp_path / run
        return Stage(run, "s", config={"base": str(run.resolve() / "world" / "base"), "prompts": paths,
                                       "list": [str(run.resolve() / "pairs.jsonl")]}, seed=0)

    here, there = stage("a", "/data/p.jsonl"), stage("b", "/data/p.jsonl")
    assert here.fingerprint == there.fingerprint
    assert here.fingerprint != stage("b", "/data/q.jsonl").fingerprint  # outside the run: the path counts
    assert here.config != there.config  # the manifest keeps the real paths
    sibling = Stage(tmp_path / "a", "s", config={"base": str((tmp_path / "ab").resolve() / "world" / "base"),
                                                 "prompts": "/data/p.jsonl", "list": []}, seed=0)
    renamed = Stage(tmp_path / "b", "s", config={"base": str((tmp_path / "bb").resolve() / "world" / "base"),
                                                 "prompts": "/data/p.jsonl", "list": []}, seed=0)
    assert sibling.fingerprint != renamed.fingerprint  # "a" is a prefix of "ab", not its parent
