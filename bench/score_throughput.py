"""Implicit-reward scoring throughput: rewardlab's completion log-probs vs TRL's DPO log-probs.

Both score the same model on the same prompt/completion pairs: TRL through
`DPOTrainer.compute_ref_log_probs` on its own collated batches (each pair's chosen and rejected,
so every sequence is scored once), rewardlab through `completion_logprobs` at the same number of
sequences per forward. Prints tokens/s (prompt + completion tokens per second) for each and the
ratio, after checking that both give the same sequence log-probs.

    python bench/score_throughput.py [--model DIR] [--pairs 512] [--batch 32]

Without --model, a 4-layer, 128-wide GPT-2 with a 500-word vocabulary is built from a config.
"""

from __future__ import annotations

import argparse
import copy
import random
import json
import tempfile
import time

import torch


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model folder (default: a GPT-2 built from a config)")
    ap.add_argument("--pairs", type=int, default=512)
    ap.add_argument("--batch", type=int, default=32, help="sequences per forward pass")
    args = ap.parse_args()
    torch.set_num_threads(2)

    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from rewardlab.diff.logprobs import completion_logprobs

    if args.model:
        from rewardlab.models import load_model

        model, tokenizer = load_model(args.model, device="cpu", dtype="float32")
        vocab = [w for w in tokenizer.get_vocab() if not w.startswith("<")]
    else:
        model, tokenizer, vocab = _word_model()
    rng = random.Random(0)

    def text(lo, hi):
        return " ".join(rng.choice(vocab) for _ in range(rng.randint(lo, hi)))

    eos = tokenizer.eos_token
    prompts = [text(2, 8) for _ in range(args.pairs)]
    chosen = [" " + text(8, 40) + eos for _ in range(args.pairs)]
    rejected = [" " + text(8, 40) + eos for _ in range(args.pairs)]

    with tempfile.TemporaryDirectory() as tmp:
        config = DPOConfig(output_dir=tmp, per_device_train_batch_size=args.batch // 2, report_to=[], use_cpu=True,
                           bf16=False, max_length=None, disable_tqdm=True)
        trainer = DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=config, processing_class=tokenizer,
                             train_dataset=Dataset.from_dict({"prompt": prompts, "chosen": chosen, "rejected": rejected}))
        ds = trainer.train_dataset
        batches = [trainer.data_collator([ds[j] for j in range(i, min(i + args.batch // 2, len(ds)))])
                   for i in range(0, len(ds), args.batch // 2)]
        n_tokens = sum(int(b["attention_mask"].sum()) for b in batches)
        start = time.perf_counter()
        trl_logps = [trainer.compute_ref_log_probs(model, b) for b in batches]
        trl_time = time.perf_counter() - start

    # the same sequences in the same grouping: each batch holds its pairs' chosen then rejected
    all_prompts, all_completions = [], []
    for i in range(0, args.pairs, args.batch // 2):
        sl = slice(i, i + args.batch // 2)
        all_prompts += prompts[sl] * 2
        all_completions += chosen[sl] + rejected[sl]
    start = time.perf_counter()
    ours = completion_logprobs(model, tokenizer, all_prompts, all_completions, batch_size=args.batch)
    our_time = time.perf_counter() - start

    trl_flat = torch.cat([torch.cat(pair) for pair in trl_logps])
    ours_flat = torch.stack([x.sum() for x in ours])
    max_diff = float((trl_flat - ours_flat).abs().max())
    print(f"model: {args.model or 'gpt2 4x128, 500 words'}; {2 * args.pairs} sequences, {n_tokens} tokens, "
          f"{args.batch} sequences per forward, CPU, 2 threads")
    print(f"max |logp difference| between the two: {max_diff:.2e}")
    print(f"TRL DPOTrainer.compute_ref_log_probs: {n_tokens / trl_time:,.0f} tokens/s ({trl_time:.2f} s)")
    print(f"rewardlab completion_logprobs:        {n_tokens / our_time:,.0f} tokens/s ({our_time:.2f} s)")
    print(f"ratio (rewardlab / TRL): {trl_time / our_time:.2f}")
    print(json.dumps({"sequences": 2 * args.pairs, "tokens": n_tokens, "batch": args.batch, "max_abs_diff": max_diff,
                      "rewardlab_tokens_per_s": n_tokens / our_time, "trl_tokens_per_s": n_tokens / trl_time,
                      "ratio": trl_time / our_time}))


if __name__ == "__main__":
    main()
