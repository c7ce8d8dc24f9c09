"""What every benchmark script shares: the two model scales, thread setup, peak memory, the JSON line.

Protocol (bench/run_all.py relies on it): each script takes `--scale tiny|135m`, `--side NAME` and
`--threads N`; it runs ONE side (rewardlab or one peer) in its own process, so the peak RSS it reports
(`resource.getrusage(RUSAGE_SELF).ru_maxrss`: the whole process, imports and model included) belongs
to that side alone, and prints one JSON line last: {side, scale, throughput, unit, seconds,
peak_rss_mb, check, ...}. `check` is a few numbers both sides compute (log-probs, activations) so the
runner can confirm they did the same work. `--side prepare` builds the inputs shared by all sides
(the random 135M model when the real one is missing, cached activations) outside any timing.

Scales:
- tiny: the review world's model or a model of the same size (each script says which).
- 135m: SmolLM2-135M-Instruct (Llama architecture, 30 x 576) at .cache/smollm2-135m-instruct when
  scripts/setup-real-model.sh has installed it; else a random LlamaForCausalLM of the same config,
  saved once to .cache/bench/random-135m with a word-level tokenizer of the same vocabulary size.
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
REAL_135M = ROOT / ".cache" / "smollm2-135m-instruct"
RANDOM_135M = ROOT / ".cache" / "bench" / "random-135m"
EXTRA_SITE = ROOT / ".cache" / "bench" / "site"  # packages installed for the benchmarks only (nnsight)
SCALES = ("tiny", "135m")
SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, head_dim=64, hidden_act="silu",
                    max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=100000.0,
                    tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)


def setup(threads: int) -> None:
    """Fixed torch threads; the runner also sets OMP_WAIT_POLICY=PASSIVE for every side."""
    torch.set_num_threads(threads)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def emit(side: str, scale: str, throughput: float, unit: str, seconds: float, **extra) -> None:
    print(json.dumps({"side": side, "scale": scale, "throughput": throughput, "unit": unit, "seconds": seconds,
                      "peak_rss_mb": round(peak_rss_mb(), 1), **extra}), flush=True)


def model_135m() -> tuple[str, str]:
    """(folder, description) of the 135M model: the real SmolLM2 if installed, else the random one."""
    if (REAL_135M / "config.json").is_file():
        return str(REAL_135M), "SmolLM2-135M-Instruct (real weights)"
    if not (RANDOM_135M / "config.json").is_file():
        _save_random_135m(RANDOM_135M)
    return str(RANDOM_135M), "random LlamaForCausalLM, SmolLM2-135M config (real model not installed)"


def _save_random_135m(folder: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<unk>", "<bos>", "<eos>"] + [f"w{i}" for i in range(SMOLLM2_135M["vocab_size"] - 3)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<eos>", unk_token="<unk>",
                                        bos_token="<bos>", eos_token="<eos>")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M))
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def use_extra_site() -> None:
    """Make the benchmark-only packages (.cache/bench/site, e.g. nnsight installed with --no-deps) importable."""
    if EXTRA_SITE.is_dir() and str(EXTRA_SITE) not in sys.path:
        sys.path.append(str(EXTRA_SITE))


def add_common_args(ap, sides: list[str]) -> None:
    ap.add_argument("--scale", choices=SCALES, default="tiny")
    ap.add_argument("--side", choices=["prepare", *sides], required=True,
                    help="which implementation this process runs (prepare: build shared inputs, untimed)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (the same for every side)")


def prepared(scale: str, extra: dict | None = None) -> None:
    """The `--side prepare` line: says which model the scale resolved to."""
    model = model_135m()[1] if scale == "135m" else "tiny"
    print(json.dumps({"side": "prepare", "scale": scale, "model": model, **(extra or {})}), flush=True)

