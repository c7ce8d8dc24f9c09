"""Activation caching throughput: rewardlab vs TransformerLens run_with_cache vs nnsight.

Same GPT-2-architecture model (random weights, converted into TransformerLens without any weight
processing, so all three compute the same activations, checked below), same token batches, one
site. rewardlab registers one hook on the site's module and stops the forward pass right after it;
TransformerLens caches with `names_filter` (its usual call; also timed with `stop_at_layer`); nnsight
traces the module's output. Prints a table and writes JSON with tokens/s and ratios.

    python bench/acts_throughput.py --layers 12 --d-model 512 --site-layer 3 --out bench/acts_throughput.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel


def build(args, device):
    cfg = GPT2Config(vocab_size=args.vocab, n_positions=args.seq, n_embd=args.d_model, n_layer=args.layers,
                     n_head=args.d_model // 64, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        hf = GPT2LMHeadModel(cfg).eval().to(device)
    return hf


def transformer_lens_model(hf, args, device):
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights

    cfg = HookedTransformerConfig(n_layers=args.layers, d_model=args.d_model, d_head=64, n_heads=args.d_model // 64,
                                  d_mlp=4 * args.d_model, d_vocab=args.vocab, n_ctx=args.seq, act_fn="gelu_new",
                                  normalization_type="LN", device=str(device))
    tl = HookedTransformer(cfg)
    tl.load_and_process_state_dict(convert_gpt2_weights(hf, cfg), fold_ln=False, center_writing_weights=False,
                                   center_unembed=False, fold_value_biases=False, refactor_factored_attn_matrices=False)
    return tl.eval()


def timed(runners: dict, batches, device, repeats: int) -> dict[str, float]:
    """Best-of-`repeats` tokens/s of each runner over all batches, after one warm-up call each. The
    runners take turns within every repeat, so load from other processes hits them alike."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for fn in runners.values():
        fn(batches[0])
    best = {name: float("inf") for name in runners}
    for _ in range(repeats):
        for name, fn in runners.items():
            sync()
            t = time.perf_counter()
            for b in batches:
                fn(b)
            sync()
            best[name] = min(best[name], time.perf_counter() - t)
    n_tokens = sum(b.numel() for b in batches)
    return {name: n_tokens / seconds for name, seconds in best.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--n-batches", type=int, default=8)
    ap.add_argument("--site-layer", type=int, default=3, help="cache blocks.L.hook_resid_post")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    from rewardlab.sites import run_with_capture

    site = f"blocks.{args.site_layer}.hook_resid_post"
    hf = build(args, device)
    tl = transformer_lens_model(hf, args, device)
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, args.vocab, (args.batch, args.seq), generator=g).to(device)
               for _ in range(args.n_batches)]

    def ours(ids):
        return run_with_capture(hf, ids, None, [site])[site]

    def tl_cache(ids):
        with torch.no_grad():
            return tl.run_with_cache(ids, names_filter=[site])[1][site]

    def tl_cache_stop(ids):
        with torch.no_grad():
            return tl.run_with_cache(ids, names_filter=[site], stop_at_layer=args.site_layer + 1)[1][site]

    reference = ours(batches[0])
    torch.testing.assert_close(tl_cache(batches[0]), reference, rtol=1e-3, atol=1e-3)
    try:
        from nnsight import NNsight

        nn_model = NNsight(hf)

        def nnsight_trace(ids):
            with torch.no_grad(), nn_model.trace(ids):
                saved = nn_model.transformer.h[args.site_layer].output.save()
            out = saved.value if hasattr(saved, "value") else saved
            return out[0] if isinstance(out, tuple) else out

        torch.testing.assert_close(nnsight_trace(batches[0]), reference, rtol=1e-3, atol=1e-3)
    except ImportError:
        nnsight_trace = None
    runners = {"rewardlab": ours, "transformer_lens.run_with_cache": tl_cache,
               "transformer_lens.run_with_cache(stop_at_layer)": tl_cache_stop}
    if nnsight_trace is not None:
        runners["nnsight.trace"] = nnsight_trace
    results = timed(runners, batches, device, args.repeats)
    ours_tps = results["rewardlab"]
    table = {name: {"tokens_per_s": tps, "rewardlab_speedup": ours_tps / tps} for name, tps in results.items()}
    info = {"device": str(device), "cpu": platform.processor() or platform.machine(), "threads": args.threads,
            "torch": torch.__version__, "config": vars(args), "site": site, "results": table}
    for name, row in table.items():
        print(f"{name:<48} {row['tokens_per_s']:>12,.0f} tok/s   rewardlab x{row['rewardlab_speedup']:.2f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(info, f, indent=2)
    print(json.dumps({"results": table}))


if __name__ == "__main__":
    main()
