"""A catalogue of bad inputs across every command.

Each case runs the command line in process and asserts what a user must get: exit code 2, one
message naming the problem (and, for rewardlab's own errors, how to fix it), no traceback, and no
file left behind in the inputs folder or the output location. Placeholders in a case's arguments:
{in} is the folder of prepared inputs (see `inputs`), {out} a fresh output folder's path that must
still not exist afterwards (or stay as it was, when a case points it at an input).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from rewardlab.cli import main

from conftest import TINY_WORDS, tiny_config

GOOD = '{"prompt": "the movie was", "completion": " good ."}\n'
PAIR = '{"prompt": "the movie was", "chosen": " good .", "rejected": " bad ."}\n'
TEXT_FILES = {
    "data.jsonl": GOOD,
    "empty.jsonl": "",
    "blank.jsonl": "\n\n",
    "notjson.jsonl": GOOD + "not json\n",
    "ints.jsonl": '{"prompt": "a", "completion": 5}\n',
    "noprompt.jsonl": '{"completion": " good ."}\n',
    "list.jsonl": '["the movie", " good ."]\n',
    "pairs.jsonl": PAIR,
    "pairs_norejected.jsonl": '{"prompt": "the movie was", "chosen": " good ."}\n',
    "nan.tsv": "good\tnan\t0.5\t[1]\n",
    "inf.tsv": "good\tinf\t0.5\t[1]\n",
    "word.tsv": "good\tvery\t0.5\t[1]\n",
    "bad.yaml": "world: [tiny\n",
    "list.yaml": "- world\n- ppo\n",
    "unknown.yaml": "name: x\nwrold: {preset: tiny}\n",
    "types.yaml": "name: x\nseed: many\n",
    "preset.yaml": "name: x\nworld: {preset: huge}\n",
    "value_few.yaml": "name: x\nworld: {preset: micro}\nppo: {phases: 1}\nvalue: {n_prompts: 4}\n",
    "sweep_repeat.yaml": "name: x\nworld: {preset: micro}\nppo: {phases: 1}\nsweep: {kl_coefs: [0.1, 0.10]}\n",
    "features.json": json.dumps({"features": []}),
    "results/results.json": json.dumps({"schema_version": 999}),
    "fake.gguf": "GGUF but not really",
    "long.jsonl": json.dumps({"prompt": " ".join(["the movie was"] * 24), "completion": " good ."}) + "\n",
    "long_completion.jsonl": json.dumps({"prompt": "the movie was", "completion": " good" * 70}) + "\n",
}
BINARY_FILES = {"latin1.jsonl": b'{"prompt": "caf\xe9", "completion": " good ."}\n',
                "latin1.yaml": b"name: caf\xe9\n", "garbage.safetensors": b"\x00\x01not a safetensors file"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A folder of bad (and a few good) inputs, and a tiny word-level model saved as a Hugging Face folder."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("inputs")
    for name, text in TEXT_FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    for name, data in BINARY_FILES.items():
        (root / name).write_bytes(data)
    (root / "folder").mkdir()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("llama", vocab_size=len(TINY_WORDS) + 2))
    vocab = {"<unk>": 0, "<eos>": 1, **{w: i + 2 for i, w in enumerate(TINY_WORDS)}}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>")
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    probe = {"weight": torch.ones(7, dtype=torch.float64), "mean": torch.zeros(7, dtype=torch.float64),
             "std": torch.ones(7, dtype=torch.float64)}
    save_file(probe, str(root / "wrong_width_probe.safetensors"), metadata={
        "kind": '"ridge"', "bias": "0.0", "meta": json.dumps({"site": "blocks.1.hook_resid_post", "position": "last"})})
    probe = {"weight": torch.ones(32, dtype=torch.float64), "mean": torch.zeros(32, dtype=torch.float64),
             "std": torch.ones(32, dtype=torch.float64)}
    save_file(probe, str(root / "long_width_probe.safetensors"), metadata={
        "kind": '"ridge"', "bias": "0.0", "meta": json.dumps({"site": "blocks.1.hook_resid_post", "position": "last"})})
    (root / "truncated.safetensors").write_bytes((root / "wrong_width_probe.safetensors").read_bytes()[:-40])
    return root


# (id, arguments, what the message must contain)
CASES = [
    # reward score: records, lexicons and outputs
    ("score-missing-file", "reward score --reward utility --in {in}/nope.jsonl --out {out}/o.jsonl", "file not found"),
    ("score-folder-as-file", "reward score --reward utility --in {in}/folder --out {out}/o.jsonl",
     "is a folder, a file was expected"),
    ("score-malformed-json", "reward score --reward utility --in {in}/notjson.jsonl --out {out}/o.jsonl",
     "notjson.jsonl:2: malformed JSON"),
    ("score-not-utf8", "reward score --reward utility --in {in}/latin1.jsonl --out {out}/o.jsonl", "not UTF-8"),
    ("score-int-field", "reward score --reward utility --in {in}/ints.jsonl --out {out}/o.jsonl",
     "field 'completion' is int, not text"),
    ("score-line-not-object", "reward score --reward utility --in {in}/list.jsonl --out {out}/o.jsonl", "list.jsonl:1"),
    ("score-unknown-reward", "reward score --reward bogus --in {in}/data.jsonl --out {out}/o.jsonl",
     "unknown reward 'bogus'"),
    ("score-bad-reward-option", "reward score --reward utility,scale=abc --in {in}/data.jsonl --out {out}/o.jsonl",
     "scale"),
    ("lexicon-nan", "reward score --reward utility,lexicon={in}/nan.tsv --in {in}/data.jsonl --out {out}/o.jsonl",
     "nan.tsv:1: valence 'nan' is not finite"),
    ("lexicon-inf", "reward score --reward utility,lexicon={in}/inf.tsv --in {in}/data.jsonl --out {out}/o.jsonl",
     "inf.tsv:1: valence 'inf' is not finite"),
    ("lexicon-word", "reward score --reward utility,lexicon={in}/word.tsv --in {in}/data.jsonl --out {out}/o.jsonl",
     "word.tsv:1: valence is not a number"),
    ("lexicon-missing", "reward score --reward utility,lexicon={in}/nope.tsv --in {in}/data.jsonl --out {out}/o.jsonl",
     "lexicon file not found"),
    ("score-out-is-folder", "reward score --reward utility --in {in}/data.jsonl --out {in}/folder", "is a folder"),
    ("score-out-under-file", "reward score --reward utility --in {in}/data.jsonl --out {in}/data.jsonl/o.jsonl",
     "is an existing file"),
    ("score-out-name-too-long", "reward score --reward utility --in {in}/data.jsonl --out {out}/" + "n" * 300,
     "File name too long"),
    ("score-out-unwritable", "reward score --reward utility --in {in}/data.jsonl --out /proc/rewardlab/o.jsonl",
     "/proc/rewardlab"),
    ("score-overwrites-prompt", "reward score --reward utility --in {in}/data.jsonl --field prompt --out {out}/o.jsonl",
     "would overwrite the records' 'prompt' text"),
    # run and report: configs and run folders
    ("run-missing-config", "run {in}/nope.yaml --out {out}", "config file not found"),
    ("run-config-is-folder", "run {in}/folder --out {out}", "is a folder, a YAML config file was expected"),
    ("run-bad-yaml", "run {in}/bad.yaml --out {out}", "not valid YAML"),
    ("run-yaml-list", "run {in}/list.yaml --out {out}", "the config must be a mapping of sections"),
    ("run-yaml-not-utf8", "run {in}/latin1.yaml --out {out}", "not UTF-8"),
    ("run-unknown-section", "run {in}/unknown.yaml --out {out}", "wrold"),
    ("run-wrong-type", "run {in}/types.yaml --out {out}", "seed"),
    ("run-unknown-preset", "run {in}/preset.yaml --out {out}", "huge"),
    ("run-value-too-few-prompts", "run {in}/value_few.yaml --out {out}", "use at least 9 prompts (n_prompts)"),
    ("run-sweep-repeated-coefficient", "run {in}/sweep_repeat.yaml --out {out}", "give each coefficient once"),
    ("report-no-results", "report {in}/folder", "results.json"),
    ("report-other-schema", "report {in}/results", "schema version 999"),
    # world and models
    ("world-unknown-preset", "world build --preset huge --out {out}", "invalid choice: 'huge'"),
    ("world-out-is-file", "world build --preset micro --out {in}/data.jsonl", "is an existing file"),
    ("convert-missing", "models convert --gguf {in}/nope.gguf --out {out}", "GGUF file not found"),
    ("convert-not-gguf", "models convert --gguf {in}/fake.gguf --out {out}", "fake.gguf"),
    # model pairs and sampling
    ("params-missing-model", "diff params --base {in}/nope --post {in}/model --out {out}", "model folder not found"),
    ("params-model-is-file", "diff params --base {in}/data.jsonl --post {in}/model --out {out}", "data.jsonl"),
    ("kl-batch-size-0", "diff kl --base {in}/model --post {in}/model --in {in}/data.jsonl --batch-size 0 --out {out}",
     "--batch-size: must be at least 1, got 0"),
    ("kl-no-prompt", "diff kl --base {in}/model --post {in}/model --in {in}/noprompt.jsonl --out {out}", "prompt"),
    ("score-beta-0", "score --base {in}/model --post {in}/model --in {in}/data.jsonl --beta 0 --out {out}/s.jsonl",
     "beta"),
    ("score-cuda-absent", "score --base {in}/model --post {in}/model --in {in}/data.jsonl --device cuda "
     "--out {out}/s.jsonl", "cuda"),
    ("score-empty-records", "score --base {in}/model --post {in}/model --in {in}/empty.jsonl --out {out}/s.jsonl",
     "empty.jsonl"),
    ("divergent-inf-alpha", "sample divergent --base {in}/model --post {in}/model --prompts {in}/data.jsonl "
     "--alphas 0,inf --out {out}/x.jsonl", "--alphas: expected comma-separated finite numbers, got '0,inf'"),
    ("divergent-zero-tokens", "sample divergent --base {in}/model --post {in}/model --prompts {in}/data.jsonl "
     "--max-new-tokens 0 --out {out}/x.jsonl", "--max-new-tokens: must be at least 1, got 0"),
    ("divergent-negative-temperature", "sample divergent --base {in}/model --post {in}/model "
     "--prompts {in}/data.jsonl --temperature -1 --out {out}/x.jsonl", "temperature"),
    ("audit-empty-attributes", "audit --rm utility --attributes ' ,' --out {out}",
     "--attributes: expected comma-separated names, got ' ,'"),
    ("audit-unknown-attribute", "audit --rm utility --attributes tone --out {out}", "unknown attribute"),
    ("audit-missing-rm", "audit --rm rm:{in}/nope --out {out}", "nope"),
    # training
    ("ppo-top-p", "train ppo --base {in}/model --top-p 1.5 --out {out}", "top_p must be in (0, 1]"),
    ("ppo-eval-samples", "train ppo --base {in}/model --eval-samples 0 --out {out}", "eval_samples must be at least 2"),
    ("ppo-bool-value", "train ppo --base {in}/model --whiten-advantages flase --out {out}",
     "unrecognized arguments: flase"),
    ("ppo-missing-prompts", "train ppo --base {in}/model --prompts {in}/nope.jsonl --out {out}", "nope.jsonl"),
    ("ppo-unknown-reward", "train ppo --base {in}/model --reward bogus --out {out}", "unknown reward 'bogus'"),
    ("ppo-negative-lr", "train ppo --base {in}/model --lr -1 --out {out}", "lr"),
    ("ppo-average-from-1", "train ppo --base {in}/model --average-from 1 --out {out}",
     "average_from must be in [0, 1), auto or last, got 1.0"),
    ("ppo-batch-under-minibatch", "train ppo --base {in}/model --batch-size 32 --out {out}",
     "batch_size 32 is not divisible by minibatch_size 64"),
    ("ppo-average-from-word", "train ppo --base {in}/model --average-from never --out {out}",
     "argument --average-from: could not convert string to float: 'never' (or one of: auto, last)"),
    ("dpo-beta-0", "train dpo --base {in}/model --pairs {in}/pairs.jsonl --beta 0 --out {out}", "beta must be above 0"),
    ("dpo-epochs-0", "train dpo --base {in}/model --pairs {in}/pairs.jsonl --epochs 0 --out {out}",
     "epochs and batch_size must be at least 1"),
    ("dpo-pair-lacks-rejected", "train dpo --base {in}/model --pairs {in}/pairs_norejected.jsonl --prompts {in}/data.jsonl "
     "--out {out}",
     "rejected"),
    ("sweep-kl-coefs-words", "train sweep --base {in}/model --kl-coefs a,b --out {out}",
     "--kl-coefs: expected comma-separated finite numbers, got 'a,b'"),
    ("sweep-kl-coefs-negative", "train sweep --base {in}/model --kl-coefs=0.1,-1 --out {out}",
     "KL coefficients must be at least 0, got [-1.0]"),
    ("sweep-parallel-runs-0", "train sweep --base {in}/model --kl-coefs 0.1,1 --parallel-runs 0 --out {out}",
     "parallel_runs must be at least 1, got 0"),
    ("sweep-optimum-samples-1", "train sweep --base {in}/model --kl-coefs 0.1 --optimum-prompts 4 --optimum-samples 1 "
     "--out {out}", "optimum_samples must be at least 2, got 1"),
    ("pairs-per-prompt-1", "data pairs --model {in}/model --per-prompt 1 --out {out}/p.jsonl",
     "per_prompt must be at least 2"),
    # the model's context (64 tokens): checked before any model work
    ("context-divergent-prompt", "sample divergent --base {in}/model --post {in}/model --prompts {in}/long.jsonl "
     "--out {out}/x.jsonl", "the prompt has 72 tokens; the model's context holds 64"),
    ("context-divergent-budget", "sample divergent --base {in}/model --post {in}/model --prompts {in}/data.jsonl "
     "--max-new-tokens 100 --out {out}/x.jsonl", "lower max_new_tokens to at most 61"),
    ("context-ppo-prompt", "train ppo --base {in}/model --prompts {in}/long.jsonl --out {out}",
     "the prompt has 72 tokens"),
    ("context-ppo-budget", "train ppo --base {in}/model --prompts {in}/data.jsonl --max-new-tokens 100 --out {out}",
     "plus max_new_tokens 100 has 103 tokens"),
    ("context-steer-budget", "steer --model {in}/model --direction {in}/long_width_probe.safetensors "
     "--prompts {in}/data.jsonl --max-new-tokens 100 --out {out}", "lower max_new_tokens to at most 61"),
    ("context-acts-record", "acts cache --model {in}/model --in {in}/long_completion.jsonl "
     "--sites blocks.0.hook_resid_post --out {out}", "the prompt plus its completion has 73 tokens"),
    ("context-score-record", "score --base {in}/model --post {in}/model --in {in}/long_completion.jsonl "
     "--out {out}/s.jsonl", "the prompt plus its completion has 73 tokens"),
    ("context-pairs-budget", "data pairs --model {in}/model --prompts {in}/data.jsonl --max-new-tokens 100 "
     "--out {out}/p.jsonl", "lower max_new_tokens to at most 61"),
    # activations, probes, steering, SAEs, explanations
    ("acts-batch-size-0", "acts cache --model {in}/model --in {in}/data.jsonl --sites blocks.0.hook_resid_post "
     "--batch-size 0 --out {out}", "--batch-size: must be at least 1, got 0"),
    ("acts-unknown-site", "acts cache --model {in}/model --in {in}/data.jsonl --sites blocks.9.hook_resid_post "
     "--out {out}", "blocks.9.hook_resid_post"),
    ("acts-unknown-position", "acts cache --model {in}/model --in {in}/data.jsonl --sites blocks.0.hook_resid_post "
     "--positions middle --out {out}", "middle"),
    ("probe-missing-target", "probe sweep --model {in}/model --in {in}/data.jsonl --target reward --out {out}",
     "reward"),
    ("steer-truncated-direction", "steer --model {in}/model --direction {in}/truncated.safetensors "
     "--site blocks.1.hook_resid_post --prompts {in}/data.jsonl --out {out}", "truncated.safetensors"),
    ("steer-garbage-direction", "steer --model {in}/model --direction {in}/garbage.safetensors "
     "--site blocks.1.hook_resid_post --prompts {in}/data.jsonl --out {out}", "not a readable safetensors file"),
    ("steer-wrong-width", "steer --model {in}/model --direction {in}/wrong_width_probe.safetensors "
     "--site blocks.1.hook_resid_post --prompts {in}/data.jsonl --out {out}",
     "the probe reads 7 dimensions but the model's width is 32"),
    ("sae-negative-lr", "sae train --model {in}/model --in {in}/data.jsonl --site blocks.0.hook_resid_post --lr -1 "
     "--out {out}", "--lr: must be a finite number above 0"),
    ("interp-no-tokenizer", "interp --features {in}/features.json --out {out}/i.json",
     "needs 'tokenizer' and 'features'"),
    ("interp-features-missing", "interp --features {in}/nope.json --out {out}/i.json", "file not found"),
]


def _files(*folders: Path) -> set[str]:
    return {str(p) for folder in folders if folder.exists() for p in folder.rglob("*")}


@pytest.mark.parametrize("argv, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gets_one_clear_error_and_leaves_nothing(argv, message, inputs, tmp_path, capsys):
    import shlex

    out = tmp_path / "out"
    before = _files(inputs)
    args = [a.replace("{in}", str(inputs)).replace("{out}", str(out)) for a in shlex.split(argv)]
    try:
        code = main(args)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and "Traceback" not in err, err
    assert "fix:" in err or "usage:" in err, err  # how to fix it: rewardlab's hint or the command's usage
    assert _files(inputs) == before and not out.exists()


def test_catalogue_is_large_enough():
    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)


def test_a_full_disk_is_one_clear_error_and_leaves_no_partial_file(inputs, tmp_path):
    """RLIMIT_FSIZE stands in for a full disk: writing past it fails with EFBIG like ENOSPC would."""
    big = tmp_path / "big.jsonl"
    big.write_text(GOOD * 2000)
    script = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
              "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096)); from rewardlab.cli import main; "
              f"sys.exit(main(['reward', 'score', '--reward', 'utility', '--in', {str(big)!r}, "
              f"'--out', {str(tmp_path / 'out' / 'o.jsonl')!r}]))")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 2 and "File too large" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()  # no partial o.jsonl, no temporary file, no folder it made


def test_ctrl_c_exits_130_and_leaves_no_temporary_file(tmp_path):
    out, log = tmp_path / "world", tmp_path / "stderr.txt"
    # SIGINT's default disposition for the child: a shell's background job inherits it ignored, and
    # Python then installs no KeyboardInterrupt handler
    default_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    with log.open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "rewardlab", "world", "build", "--preset", "tiny",
                                 "--out", str(out)], stdout=subprocess.DEVNULL, stderr=stderr, text=True,
                                preexec_fn=default_sigint)
        try:
            deadline = time.monotonic() + 300
            while "pretraining" not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)  # interrupt while it trains, not while Python starts
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    err = log.read_text()
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
    assert not out.exists() or not [p for p in out.rglob("*") if p.name.endswith(".tmp") or p.is_file()]
