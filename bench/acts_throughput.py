"""Activation caching throughput: rewardlab vs TransformerLens (HookedTransformer and TransformerBridge)
vs nnsight, one side per process, each in its fastest documented configuration for caching one site.

    python bench/acts_throughput.py --scale tiny|135m --side SIDE [--batch 8] [--n-batches 4] [--seq 128]

Model: tiny = a random 12 x 256 GPT-2 (vocabulary 8192), site blocks.3.hook_resid_post; 135m =
bench/common.model_135m() (Llama), site blocks.15.hook_resid_post. Same token batches (random ids,
seed 1) for every side. Sides:
- rewardlab: `sites.run_with_capture` (one hook on the site's module; the forward stops after it).
- tl_hooked_stop: `HookedTransformer.run_with_cache(names_filter=[site], stop_at_layer=L + 1)`, the
  weights converted with no processing (no LayerNorm folding or centering), so the activations equal HF's.
- tl_bridge_stop: `TransformerBridge.boot_transformers(folder, hf_model=...)` (TransformerLens 3's
  native-HF path; it forces eager attention), `run_with_cache(names_filter=[site], stop_at_layer=L + 1)`.
- nnsight: `NNsight(model).trace(ids)`, saving the layer's output and `tracer.stop()` after it.
Each side makes one untimed warm-up call, then the best of `--repeats` passes over all batches is
timed. `check`: the mean |activation| and 4 values of the first batch (the runner compares them).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_common_args, emit, model_135m, prepared, setup, use_extra_site  # noqa: E402

SIDES = ["rewardlab", "tl_hooked_stop", "tl_bridge_stop", "nnsight"]
TINY = dict(layers=12, d_model=256, vocab=8192, site_layer=3)


def hf_model(scale: str, seq: int):
    """(model, folder or None, site layer, vocabulary size)."""
    if scale == "135m":
        from transformers import AutoModelForCausalLM

        folder = model_135m()[0]
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        return model, folder, 15, model.config.vocab_size
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=TINY["vocab"], n_positions=seq, n_embd=TINY["d_model"], n_layer=TINY["layers"],
                     n_head=TINY["d_model"] // 64, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     bos_token_id=0, eos_token_id=0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return GPT2LMHeadModel(cfg).eval(), None, TINY["site_layer"], TINY["vocab"]


def hooked_transformer(hf, seq: int):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    c = hf.config
    if c.model_type == "gpt2":
        from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights as convert

        cfg = HookedTransformerConfig(n_layers=c.n_layer, d_model=c.n_embd, d_head=64, n_heads=c.n_head,
                                      d_mlp=4 * c.n_embd, d_vocab=c.vocab_size, n_ctx=seq, act_fn="gelu_new",
                                      normalization_type="LN")
    else:
        from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights as convert

        cfg = HookedTransformerConfig(n_layers=c.num_hidden_layers, d_model=c.hidden_size, d_head=c.head_dim,
                                      n_heads=c.num_attention_heads, n_key_value_heads=c.num_key_value_heads,
                                      d_mlp=c.intermediate_size, d_vocab=c.vocab_size, n_ctx=seq, act_fn="silu",
                                      normalization_type="RMS", positional_embedding_type="rotary",
                                      rotary_dim=c.head_dim, rotary_base=c.rope_parameters["rope_theta"],
                                      gated_mlp=True, final_rms=True, eps=c.rms_norm_eps)
    tl = HookedTransformer(cfg)
    tl.load_and_process_state_dict(convert(hf, cfg), fold_ln=False, center_writing_weights=False,
                                   center_unembed=False, fold_value_biases=False, refactor_factored_attn_matrices=False)
    return tl.eval()


def runner(side: str, hf, folder: str | None, layer: int, seq: int):
    """The side's function ids [batch, seq] -> activation [batch, seq, d_model] at blocks.layer.hook_resid_post."""
    site = f"blocks.{layer}.hook_resid_post"
    if side == "rewardlab":
        from rewardlab.sites import run_with_capture

        return lambda ids: run_with_capture(hf, ids, None, [site])[site]
    if side == "tl_hooked_stop":
        tl = hooked_transformer(hf, seq)
        return lambda ids: tl.run_with_cache(ids, names_filter=[site], stop_at_layer=layer + 1)[1][site]
    if side == "tl_bridge_stop":
        from transformer_lens.model_bridge import TransformerBridge

        with tempfile.TemporaryDirectory() as tmp:
            if folder is None:  # the bridge reads the tokenizer from a folder: save the tiny GPT-2's config there
                hf.config.save_pretrained(tmp)
            bridge = TransformerBridge.boot_transformers(folder or tmp, hf_model=hf, device="cpu",
                                                         tokenizer=_any_tokenizer(folder))
        return lambda ids: bridge.run_with_cache(ids, names_filter=[site], stop_at_layer=layer + 1)[1][site]
    use_extra_site()
    from nnsight import NNsight

    model = NNsight(hf)
    blocks = hf.transformer.h if hf.config.model_type == "gpt2" else hf.model.layers
    path = "transformer.h" if hf.config.model_type == "gpt2" else "model.layers"

    def trace(ids):
        with model.trace(ids) as tracer:
            node = model
            for part in path.split("."):
                node = getattr(node, part)
            saved = node[layer].output.save()
            tracer.stop()
        out = saved.value if hasattr(saved, "value") else saved
        return out[0] if isinstance(out, tuple) else out

    assert len(blocks) > layer
    return trace


def _any_tokenizer(folder: str | None):
    from transformers import AutoTokenizer

    if folder is not None:
        return AutoTokenizer.from_pretrained(folder)
    from score_throughput import _word_model

    return _word_model()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap, SIDES)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--n-batches", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2, help="timed passes over all batches (best counts)")
    args = ap.parse_args()
    setup(args.threads)
    if args.side == "prepare":
        return prepared(args.scale)
    hf, folder, layer, vocab = hf_model(args.scale, args.seq)
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, vocab, (args.batch, args.seq), generator=g) for _ in range(args.n_batches)]
    fn = runner(args.side, hf, folder, layer, args.seq)
    with torch.no_grad():
        first = fn(batches[0])  # warm-up, untimed
        best = float("inf")
        for _ in range(args.repeats):
            t = time.perf_counter()
            for b in batches:
                fn(b)
            best = min(best, time.perf_counter() - t)
    n_tokens = sum(b.numel() for b in batches)
    emit(args.side, args.scale, n_tokens / best, "tokens/s", best, tokens=n_tokens, batch=args.batch, seq=args.seq,
         site=f"blocks.{layer}.hook_resid_post", threads=args.threads, model=folder or "gpt2 12x256 random",
         check=[float(first.abs().mean())] + [float(v) for v in first[0, :4, 0]])


if __name__ == "__main__":
    main()
