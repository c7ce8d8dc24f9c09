"""Tiny random GPT-2 language models and a word-level tokenizer for the diffing tests (no downloads)."""

from __future__ import annotations

import torch

WORDS = ["<pad>", "<unk>", "<s>", "</s>", "the", "film", "movie", "was", "is", "great", "good", "bad",
         "awful", "and", "plot", "acting", "very", "quite", ".", "review", ":"]


def word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<s>", eos_token="</s>")


def tiny_lm(seed: int = 0, n_layer: int = 2):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(n_layer=n_layer, n_embd=32, n_head=2, n_positions=64, vocab_size=len(WORDS),
                     bos_token_id=2, eos_token_id=3, pad_token_id=0)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return GPT2LMHeadModel(cfg).eval()


def tiny_pair(scale: float = 0.05, layer: int = 1):
    """(base, post, tokenizer): post = base with one block's weights perturbed by `scale` noise."""
    base, post = tiny_lm(0), tiny_lm(0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in post.named_parameters():
            if f".h.{layer}." in name:
                p.add_(scale * torch.randn(p.shape, generator=g))
    return base, post, word_tokenizer()


PROMPTS = ["review :", "the film was", "the movie", "review : the acting was very"]
COMPLETIONS = [" great .", " awful and bad .", " was good and the plot was great .", " bad"]


def save_pair(folder, scale: float = 0.05):
    """Save `tiny_pair(scale)` as Hugging Face folders folder/base and folder/post; return their paths."""
    base, post, tok = tiny_pair(scale)
    paths = []
    for name, model in (("base", base), ("post", post)):
        model.save_pretrained(folder / name)
        tok.save_pretrained(folder / name)
        paths.append(str(folder / name))
    return paths


def write_records(path, prompts=PROMPTS, completions=COMPLETIONS):
    import json

    path.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in zip(prompts, completions)))
    return str(path)
