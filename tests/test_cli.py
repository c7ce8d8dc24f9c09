import subprocess
import sys

import pytest

from rewardlab.cli import build_parser, main


def test_help_lists_commands_and_each_has_help(capsys):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"demo", "world", "reward"} <= set(sub.choices)
    for name, p in sub.choices.items():
        assert p.format_help()


def test_bad_input_exits_2_without_traceback(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"completion": "ok"}\nnot json\n')
    proc = subprocess.run([sys.executable, "-m", "rewardlab.cli", "reward", "score", "--reward", "utility",
                           "--in", str(bad), "--out", str(tmp_path / "o.jsonl")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "bad.jsonl:2: malformed JSON" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o.jsonl").exists()


def test_unknown_reward_exit_code(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "completion": "great"}\n')
    assert main(["reward", "score", "--reward", "bogus", "--in", str(data), "--out", str(tmp_path / "o")]) == 2
    assert "unknown reward 'bogus'" in capsys.readouterr().err
    assert main(["reward", "score", "--reward", "utility", "--in", str(data), "--out", str(tmp_path / "o")]) == 0


def test_readme_commands_are_what_ci_runs():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    readme = root.joinpath("README.md").read_text()
    blocks = [b.split("```")[0].strip() for b in readme.split("```bash\n")[1:3]]
    assert blocks[0].endswith("rewardlab demo") and "torch==2.13.0" in root.joinpath("constraints.txt").read_text()
    assert blocks[1] in root.joinpath(".ci", "run").read_text()


def test_bad_options_exit_2_before_any_work(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "completion": "great"}\n')
    (tmp_path / "afile").write_text("keep")
    cases = [
        (["acts", "cache", "--model", "m", "--in", str(data), "--sites", "blocks.0.hook_resid_post",
          "--batch-size", "0", "--out", str(tmp_path / "c")], "--batch-size: must be at least 1, got 0"),
        (["diff", "params", "--base", "a", "--post", "b", "--out", str(tmp_path / "afile")], "is an existing file"),
        (["reward", "score", "--reward", "utility", "--in", str(data), "--out", str(tmp_path)], "is a folder"),
        (["sae", "train", "--model", "m", "--in", str(data), "--site", "blocks.0.hook_resid_post", "--lr", "-1",
          "--out", str(tmp_path / "s")], "--lr: must be a finite number above 0"),
        (["train", "ppo", "--base", "m", "--out", str(tmp_path / "p"), "--whiten-advantages", "flase"],
         "expected true or false, got 'flase'"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2 and message in capsys.readouterr().err, argv
    assert (tmp_path / "afile").read_text() == "keep" and not (tmp_path / "c").exists()


def test_unparsable_lists_and_wrong_field_types_exit_2(tmp_path, capsys):
    ints = tmp_path / "ints.jsonl"
    ints.write_text('{"prompt": "a", "completion": 5}\n')
    assert main(["reward", "score", "--reward", "utility", "--in", str(ints), "--out", str(tmp_path / "o")]) == 2
    assert "field 'completion' is int, not text" in capsys.readouterr().err
    model = str(tmp_path / "no-model")  # never loaded: the option fails first
    assert main(["train", "sweep", "--base", model, "--out", str(tmp_path / "w"), "--kl-coefs", "a,b"]) == 2
    assert "expected comma-separated finite numbers, got 'a,b'" in capsys.readouterr().err
    assert main(["sample", "divergent", "--base", model, "--post", model, "--prompts", str(ints), "--alpha", "0,inf",
                 "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "finite numbers" in capsys.readouterr().err


def test_out_of_range_settings_exit_2_before_loading_anything(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "completion": "great"}\n')
    model = str(tmp_path / "no-model")  # never loaded: the check fails first
    cases = [
        (["train", "dpo", "--base", model, "--pairs", str(data), "--beta", "0", "--out", str(tmp_path / "d")],
         "beta must be above 0"),
        (["train", "dpo", "--base", model, "--pairs", str(data), "--epochs", "0", "--out", str(tmp_path / "d")],
         "epochs and batch_size must be at least 1"),
        (["train", "dpo", "--base", model, "--pairs", str(data), "--eval-samples", "0", "--out", str(tmp_path / "d")],
         "eval_samples must be at least 2"),
        (["train", "ppo", "--base", model, "--top-p", "1.5", "--out", str(tmp_path / "p")], "top_p must be in (0, 1]"),
        (["train", "ppo", "--base", model, "--eval-samples", "0", "--out", str(tmp_path / "p")],
         "eval_samples must be at least 2"),
        (["train", "sweep", "--base", model, "--kl-coefs=0.1,-1", "--out", str(tmp_path / "s")],
         "KL coefficients must be at least 0, got [-1.0]"),
        (["data", "pairs", "--model", model, "--per-prompt", "1", "--out", str(tmp_path / "x.jsonl")],
         "per_prompt must be at least 2"),
        (["reward", "score", "--reward", "utility", "--in", str(data), "--field", "prompt",
          "--out", str(tmp_path / "o.jsonl")], "would overwrite the records' 'prompt' text"),
        (["audit", "--rm", "utility", "--attributes", " ,", "--out", str(tmp_path / "a")], "no attribute given"),
        (["interp", "--features", str(data), "--out", str(tmp_path / "i.json")], "needs 'tokenizer' and 'features'"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl"]  # nothing written


def test_malformed_features_file_names_the_entry(tmp_path, capsys):
    import json

    features = tmp_path / "features.json"
    lacks = "features[0]: the feature entry lacks layer, site, store, sae, features"
    for entry, message in [({"model": "post"}, lacks),
                           ({"model": "post", "layer": 0, "site": "s", "store": "x", "sae": "y", "features": [1, -2]},
                            "features[0]: `features` must be a non-empty list of feature ids"),
                           ("post", "features[0]: a feature entry must be a mapping")]:
        features.write_text(json.dumps({"tokenizer": str(tmp_path), "features": [entry]}))
        assert main(["interp", "--features", str(features), "--out", str(tmp_path / "i.json")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "i.json").exists()
