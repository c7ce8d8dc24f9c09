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
