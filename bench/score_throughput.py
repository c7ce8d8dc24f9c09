"""Implicit-reward scoring throughput: rewardlab's completion log-probs vs TRL's DPO log-probs, one side per process.

Both score the same model on the same prompt/completion pairs: TRL through
`DPOTrainer.compute_ref_log_probs` on its own collated batches (each pair's chosen and rejected,
so every sequence is scored once; collation is done before the clock starts); one untimed warm-up batch each, rewardlab through
`completion_logprobs` at the same number of sequences per forward (its tokenization timed; it groups
sequences of similar length into a batch, TRL keeps each pair's chosen and rejected together). Both
score plain text: rewardlab's tokenizer is loaded with the chat template off, as TRL applies none to
string prompts (SmolLM2's template would put its system turn and the user turn around every prompt on
rewardlab's side only), and the 135m texts are words of SmolLM2's vocabulary, on which tokenizing the
prompt and the completion apart (rewardlab) and together (TRL) give the same tokens. Prints
tokens/s (prompt + completion tokens per second) and, as `check`, the summed log-probs of the first
8 sequences, which the runner compares across sides.

    python bench/score_throughput.py --scale tiny|135m --side rewardlab|trl_dpo [--pairs 512] [--batch 32]

tiny: a 4-layer, 128-wide GPT-2 with a 500-word vocabulary (the review world's model size), built
from a config; 135m: bench/common.model_135m(), the texts drawn from its vocabulary.
"""

from __future__ import annotations

import argparse
import copy
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_common_args, emit, model_135m, prepared, setup  # noqa: E402

SIDES = ["rewardlab", "trl_dpo"]


def _word_model(n_words: int = 500):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = ["<pad>", "<unk>", "<eos>"] + [f"w{i}" for i in range(n_words)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>")
    cfg = GPT2Config(n_layer=4, n_embd=128, n_head=4, n_positions=128, vocab_size=len(words),
                     bos_token_id=None, eos_token_id=2, pad_token_id=0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = GPT2LMHeadModel(cfg).eval()
    return model, tokenizer, words[3:]


def _words(tokenizer) -> list[str]:
    """The vocabulary's alphanumeric tokens as text ("Ġcat" -> "cat"), sorted."""
    words = []
    for token in tokenizer.get_vocab():
        text = tokenizer.convert_tokens_to_string([token]).strip()
        if text.isascii() and text.isalnum() and token.lstrip("Ġ▁").isalnum():
            words.append(text)
    return sorted(set(words))


def texts(vocab: list[str], eos: str, pairs: int) -> tuple[list[str], list[str], list[str]]:
    rng = random.Random(0)

    def text(lo, hi):
        return " ".join(rng.choice(vocab) for _ in range(rng.randint(lo, hi)))

    prompts = [text(2, 8) for _ in range(pairs)]
    chosen = [" " + text(8, 40) + eos for _ in range(pairs)]
    rejected = [" " + text(8, 40) + eos for _ in range(pairs)]
    return prompts, chosen, rejected


def trl_side(model, tokenizer, prompts, chosen, rejected, batch: int) -> tuple[float, int, list[float]]:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    with tempfile.TemporaryDirectory() as tmp:
        config = DPOConfig(output_dir=tmp, per_device_train_batch_size=batch // 2, report_to=[], use_cpu=True,
                           bf16=False, max_length=None, disable_tqdm=True)
        trainer = DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=config, processing_class=tokenizer,
                             train_dataset=Dataset.from_dict({"prompt": prompts, "chosen": chosen, "rejected": rejected}))
        ds = trainer.train_dataset
        batches = [trainer.data_collator([ds[j] for j in range(i, min(i + batch // 2, len(ds)))])
                   for i in range(0, len(ds), batch // 2)]
        n_tokens = sum(int(b["attention_mask"].sum()) for b in batches)
        trainer.compute_ref_log_probs(model, batches[0])  # warm-up, untimed
        start = time.perf_counter()
        logps = [trainer.compute_ref_log_probs(model, b) for b in batches]
        seconds = time.perf_counter() - start
    flat = torch.cat([torch.cat(pair) for pair in logps])
    return seconds, n_tokens, [float(x) for x in flat[:8]]


def rewardlab_side(model, tokenizer, prompts, chosen, rejected, batch: int) -> tuple[float, int, list[float]]:
    from rewardlab.diff.logprobs import completion_logprobs, encode

    # the same sequences in the same grouping as TRL: each batch holds its pairs' chosen then rejected
    all_prompts, all_completions = [], []
    for i in range(0, len(prompts), batch // 2):
        sl = slice(i, i + batch // 2)
        all_prompts += prompts[sl] * 2
        all_completions += chosen[sl] + rejected[sl]
    n_tokens = sum(len(r.ids) for r in encode(tokenizer, all_prompts, all_completions))
    completion_logprobs(model, tokenizer, all_prompts[:batch], all_completions[:batch], batch_size=batch)  # warm-up
    start = time.perf_counter()
    ours = completion_logprobs(model, tokenizer, all_prompts, all_completions, batch_size=batch)
    seconds = time.perf_counter() - start
    return seconds, n_tokens, [float(x.sum()) for x in ours[:8]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap, SIDES)
    ap.add_argument("--pairs", type=int, default=512)
    ap.add_argument("--batch", type=int, default=32, help="sequences per forward pass")
    args = ap.parse_args()
    setup(args.threads)
    if args.side == "prepare":
        return prepared(args.scale)
    if args.scale == "135m":
        from rewardlab.models import load_model

        folder, name = model_135m()
        # plain text on both sides: TRL applies no chat template to string prompts, so rewardlab must not
        # either (its default, chat_template auto, renders SmolLM2's system and user turns around the prompt)
        model, tokenizer = load_model(folder, device="cpu", dtype="float32", chat_template="off")
        vocab = _words(tokenizer)
    else:
        (model, tokenizer, vocab), name = _word_model(), "gpt2 4x128, 500 words"
    prompts, chosen, rejected = texts(sorted(vocab), tokenizer.eos_token, args.pairs)
    side = rewardlab_side if args.side == "rewardlab" else trl_side
    seconds, n_tokens, check = side(model, tokenizer, prompts, chosen, rejected, args.batch)
    emit(args.side, args.scale, n_tokens / seconds, "tokens/s", seconds, tokens=n_tokens, sequences=2 * args.pairs,
         batch=args.batch, threads=args.threads, model=name, check=check)


if __name__ == "__main__":
    main()
