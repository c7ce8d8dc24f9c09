"""SAE training throughput and FVU: rewardlab vs SAELens on the same cached activations, one side per process.

    python bench/sae_throughput.py --world WORLD --scale tiny|135m --side prepare|rewardlab|saelens
                                   [--expansion 4 --k 16 --batch 1024 --steps 300 --lr 1e-3 --peer-lr LR]
                                   [--dead-window-steps 1000]

`--side prepare` caches the activations once (safetensors under .cache/bench/): the residual stream
of the scale's model on random token ids (seed 0, sequences of 128, position 0 dropped: its
attention-sink norms would dominate), `steps * batch` training tokens plus 8192 held-out ones.
tiny: the review world's base (WORLD/base, 4 x 128 GPT-2) at blocks.1.hook_resid_post; 135m:
bench/common.model_135m() at blocks.6.hook_resid_post (a shallow layer keeps the caching cheap).

Both sides train a BatchTopK SAE of width expansion * d_in, k, batch, float32, Adam (rewardlab at `--lr`,
SAELens at `--peer-lr`, by default the same), with the same dead-latent rule: a latent that has not fired for
more than `--dead-window-steps` steps is dead and takes part in the AuxK loss (default 1000, SAELens'
`dead_feature_window`; rewardlab's `dead_window` is set to (N + 1) x batch tokens, the same rule), for
exactly one pass over the same training tokens (each shuffles with its own seeded permutation), with
inputs scaled so that mean |x|^2 = d_in (SAELens' `normalize_activations="expected_average_only_in"`,
rewardlab's fixed rule). rewardlab: `train_sae` (its batching, AuxK bookkeeping, lr decay, decoder
renormalization; its own tokens/s, which excludes the final threshold calibration). SAELens: its
training step (`training_forward_pass` + backward + grad-norm clip + Adam + dead-latent bookkeeping:
the body of `SAETrainer._train_step`) without its activation store, timed over the step loop. FVU on
the held-out tokens (rewardlab: its inference rule, the threshold calibrated at the end of training;
SAELens: BatchTopK over held-out batches of `batch` tokens, the rule it trained with. SAELens' own
inference conversion, JumpReLU at its running `topk_threshold`, is not used: that threshold is an
EMA with rate 0.01 per step and is still far from converged after a few hundred steps, which gave
FVU > 1 after 100 steps.) Beside the FVU, each side reports the fraction of latents that never fire on the
held-out tokens under that rule (`dead_fraction`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, add_common_args, emit, model_135m, prepared, setup  # noqa: E402

SIDES = ["rewardlab", "saelens"]
HELD_OUT = 8192


def cache_path(scale: str, n_train: int) -> Path:
    return ROOT / ".cache" / "bench" / f"sae-acts-{scale}-{n_train}.safetensors"


def cache_acts(scale: str, world: str, n_train: int) -> Path:
    """Cache n_train + HELD_OUT activations of the scale's model (see the module docstring)."""
    from safetensors.torch import save_file

    from rewardlab.models import load_model
    from rewardlab.sites import run_with_capture

    path = cache_path(scale, n_train)
    if path.is_file():
        return path
    folder, layer = (str(Path(world) / "base"), 1) if scale == "tiny" else (model_135m()[0], 6)
    model, _ = load_model(folder, device="cpu", dtype="float32")
    site, seq, need = f"blocks.{layer}.hook_resid_post", 128, n_train + HELD_OUT
    g = torch.Generator().manual_seed(0)
    rows, have = [], 0
    while have < need:
        ids = torch.randint(0, model.config.vocab_size, (16, seq), generator=g)
        acts = run_with_capture(model, ids, None, [site])[site][:, 1:].reshape(-1, model.config.hidden_size)
        rows.append(acts)
        have += len(acts)
    acts = torch.cat(rows)[:need].contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"train": acts[:n_train].clone(), "held_out": acts[n_train:].clone()}, str(path),
              metadata={"model": folder, "site": site})
    return path


def rewardlab_side(train: torch.Tensor, held: torch.Tensor, d_sae: int, k: int, batch: int,
                   lr: float, seed: int, dead_window_steps: int) -> tuple[float, float, float]:
    """(tokens/s, held-out FVU, held-out dead fraction)."""
    from rewardlab.sae.metrics import reconstruction_metrics
    from rewardlab.sae.model import SAEConfig
    from rewardlab.sae.train import TrainConfig, train_sae

    cfg = SAEConfig(d_in=train.shape[1], d_sae=d_sae, architecture="batchtopk", k=k)
    result = train_sae(train, cfg, TrainConfig(batch_size=batch, n_tokens=len(train), lr=lr, seed=seed,
                                               dead_window=(dead_window_steps + 1) * batch, progress=False))
    metrics = reconstruction_metrics(result.sae, held)
    return result.tokens_per_second, metrics["fvu"], metrics["dead_fraction"]


def saelens_side(train: torch.Tensor, held: torch.Tensor, d_sae: int, k: int, batch: int,
                 lr: float, seed: int, dead_window_steps: int) -> tuple[float, float, float]:
    """(tokens/s, held-out FVU, held-out dead fraction)."""
    from sae_lens import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.saes.sae import TrainStepInput

    d_in = train.shape[1]
    scale = (d_in / train[:batch].pow(2).sum(-1).mean()).sqrt()  # expected_average_only_in
    torch.manual_seed(seed)
    sae = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k))
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    since_fired = torch.zeros(d_sae)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))

    def step(i: int) -> None:
        x = train[order[i * batch:(i + 1) * batch]] * scale
        out = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=since_fired > dead_window_steps,
                                                       n_training_steps=i, is_logging_step=False))
        with torch.no_grad():
            fired = out.feature_acts.bool().any(0)
            since_fired.add_(1).masked_fill_(fired, 0)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad()

    t0 = time.perf_counter()
    for i in range(len(train) // batch):
        step(i)
    tokens_per_s = len(train) // batch * batch / (time.perf_counter() - t0)
    with torch.no_grad():  # BatchTopK over held-out batches of `batch` tokens: the rule its loss trained
        x = held[:len(held) // batch * batch] * scale
        codes = [sae.encode(xb) for xb in x.split(batch)]
        x_hat = torch.cat([sae.decode(f) for f in codes])
        fvu = float(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
        dead_fraction = float(1 - torch.cat(codes).gt(0).any(0).float().mean())
    return tokens_per_s, fvu, dead_fraction


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap, SIDES)
    ap.add_argument("--world", required=True, help="a built review world (the tiny scale caches its base model)")
    ap.add_argument("--expansion", type=int, default=4)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=300, help="training steps = one pass over steps * batch tokens")
    ap.add_argument("--lr", type=float, default=1e-3, help="rewardlab's Adam learning rate")
    ap.add_argument("--peer-lr", type=float, default=None, help="SAELens' Adam learning rate (default: --lr)")
    ap.add_argument("--dead-window-steps", type=int, default=1000,
                    help="steps without firing after which a latent is dead (AuxK), both sides (SAELens' default)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the SAE's initialization and the token order")
    a = ap.parse_args()
    setup(a.threads)
    n_train = a.steps * a.batch
    if a.side == "prepare":
        return prepared(a.scale, {"acts": str(cache_acts(a.scale, a.world, n_train))})
    from safetensors.torch import load_file

    path = cache_path(a.scale, n_train)
    tensors = load_file(str(path))
    train, held = tensors["train"], tensors["held_out"]
    d_sae = a.expansion * train.shape[1]
    side, lr = (rewardlab_side, a.lr) if a.side == "rewardlab" else (saelens_side, a.peer_lr or a.lr)
    tokens_per_s, fvu, dead_fraction = side(train, held, d_sae, a.k, a.batch, lr, a.seed, a.dead_window_steps)
    emit(a.side, a.scale, tokens_per_s, "tokens/s", n_train / tokens_per_s, fvu=fvu, dead_fraction=dead_fraction,
         d_in=train.shape[1], d_sae=d_sae, k=a.k, batch=a.batch, steps=a.steps, lr=lr, seed=a.seed,
         dead_window_steps=a.dead_window_steps, threads=a.threads, held_out_tokens=len(held),
         model=f"cached activations {path.name}")


if __name__ == "__main__":
    main()
