import subprocess
import sys

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
