"""The review world's word-level tokenizer, as a `transformers.PreTrainedTokenizerFast`.

One token per whitespace-separated word. Ids: <pad>=0, <bos>=1, <eos>=2, <unk>=3, then the words
in sorted order. Encoding with `add_special_tokens=True` (the default) puts <bos> in front, so
prompts start with <bos>; completions are encoded with `add_special_tokens=False`. Decoding joins
words with single spaces. Padding is on the left (`padding_side="left"`), the natural side for
generation: the last column of a padded batch is every row's last real token.
"""

from __future__ import annotations

from typing import Sequence

from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from rewardlab.world.grammar import BOS, EOS, PAD, UNK

SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)


def build_tokenizer(words: Sequence[str], model_max_length: int = 128) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over `words` (sorted, deduplicated) plus the four special tokens."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for w in sorted(set(words) - set(SPECIAL_TOKENS)):
        vocab[w] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B:1", special_tokens=[(BOS, vocab[BOS])])
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        padding_side="left", clean_up_tokenization_spaces=False, model_max_length=model_max_length, model_input_names=["input_ids", "attention_mask"],
    )
