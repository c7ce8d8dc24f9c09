"""SAE training throughput: rewardlab vs SAELens on the same cached activations, architecture
(BatchTopK), width, k, batch size, dtype (float32), number of steps and thread count.

SAELens is timed through its own training step (`training_forward_pass` + backward + grad-norm clip
+ Adam + dead-latent bookkeeping: the body of `SAETrainer._train_step`), without its activation
store, so both sides read the same in-memory tensor. rewardlab is timed through `train_sae` (its
batching, AuxK bookkeeping and threshold tracking included). After one warm-up, the two are timed
alternately `--repeats` times in one process (so both see the same machine load); the per-run
ratios and their median are printed as JSON.

    python bench/sae_throughput.py [--acts STORE --site SITE] [--d-in 128 --expansion 4 --k 16 --batch 1024
                                    --steps 300 --repeats 5 --threads 1]
Without --acts it uses Gaussian activations of width d_in (the cost does not depend on the values).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def rewardlab_tokens_per_s(acts: torch.Tensor, d_sae: int, k: int, batch: int, steps: int) -> float:
    from rewardlab.sae.model import SAEConfig
    from rewardlab.sae.train import TrainConfig, train_sae

    cfg = SAEConfig(d_in=acts.shape[1], d_sae=d_sae, architecture="batchtopk", k=k)
    return train_sae(acts, cfg, TrainConfig(batch_size=batch, n_tokens=batch * steps)).tokens_per_second


def saelens_tokens_per_s(acts: torch.Tensor, d_sae: int, k: int, batch: int, steps: int) -> float:
    from sae_lens import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.saes.sae import TrainStepInput

    sae = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=acts.shape[1], d_sae=d_sae, k=k))
    opt = torch.optim.Adam(sae.parameters(), lr=3e-4)
    since_fired = torch.zeros(d_sae)
    gen = torch.Generator().manual_seed(0)

    def step(i: int) -> None:
        x = acts[torch.randint(0, len(acts), (batch,), generator=gen)]
        out = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=since_fired > 1000,
                                                       n_training_steps=i, is_logging_step=False))
        with torch.no_grad():
            fired = out.feature_acts.bool().any(0)
            since_fired.add_(1).masked_fill_(fired, 0)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad()

    step(0)
    t0 = time.perf_counter()
    for i in range(1, steps + 1):
        step(i)
    return batch * steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--acts", default=None, help="activation store folder (per-token)")
    ap.add_argument("--site", default=None)
    ap.add_argument("--d-in", type=int, default=128)
    ap.add_argument("--expansion", type=int, default=4)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.acts:
        from rewardlab.acts import ActivationStore
        from rewardlab.sae.diffing import load_tokens

        acts = load_tokens(ActivationStore(a.acts), a.site).acts
    else:
        acts = torch.randn(50_000, a.d_in, generator=torch.Generator().manual_seed(0))
    d_sae = a.expansion * acts.shape[1]
    rewardlab_tokens_per_s(acts, d_sae, a.k, a.batch, 2)  # warm-up (allocator, lazy imports)
    saelens_tokens_per_s(acts, d_sae, a.k, a.batch, 2)
    ours, theirs = [], []
    for _ in range(a.repeats):
        ours.append(rewardlab_tokens_per_s(acts, d_sae, a.k, a.batch, a.steps))
        theirs.append(saelens_tokens_per_s(acts, d_sae, a.k, a.batch, a.steps))
    ratios = [o / t for o, t in zip(ours, theirs)]
    print(json.dumps({"d_in": acts.shape[1], "d_sae": d_sae, "k": a.k, "batch": a.batch, "steps": a.steps,
                      "threads": a.threads, "repeats": a.repeats, "n_tokens_cached": len(acts),
                      "rewardlab_tokens_per_s": [round(v) for v in ours],
                      "saelens_tokens_per_s": [round(v) for v in theirs],
                      "ratios": [round(r, 2) for r in ratios], "median_ratio": round(statistics.median(ratios), 2)}))


if __name__ == "__main__":
    main()
