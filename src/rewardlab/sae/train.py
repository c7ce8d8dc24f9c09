"""Train a sparse autoencoder on activations (a tensor [n_tokens, d_in] or an iterable of batches), or a
sparse dictionary that predicts other activations of the same tokens (`targets`, e.g. the difference
dictionary: base-model inputs, post-model targets; the loss and every rule below then compare x_hat
with the target instead of the input).

Loss = MSE(x, x_hat) summed over d_in and averaged over tokens, plus
  - relu: l1_coefficient * sum_j |f_j| (decoder rows are unit norm, so this is the SAELens L1);
  - topk / batchtopk: aux_k_coefficient * AuxK loss (Gao et al. 2024; the SAELens/sparsify form):
    the latents that have not fired for `dead_window` tokens reconstruct the residual x - x_hat
    with their own top-`aux_k` pre-activations; the loss is the MSE of that reconstruction in the
    same units as the main MSE, times min(1, n_dead / aux_k) (sparsify's damping when few are
    dead). This gives dead latents a gradient toward the directions the live ones miss; it is off
    while nothing is dead. As in SAELens (unlike sparsify) the pre-activations are used before the
    ReLU, so a latent whose pre-activation is negative on every token (the usual way to die) still
    gets a gradient. The coefficient is SAELens' 1.0: Gao et al.'s 1/32 multiplies a loss normalized
    by |residual|^2 next to a main loss normalized by |x|^2, which in these unnormalized units is a
    coefficient of (1/32) / FVU, about 1-2 at FVU 0.01-0.03 (measurements of the choice: docs/FINDINGS.md).
Inputs are scaled by one constant so that mean |x|^2 = d_in (SAELens "expected_average_only_in"),
targets by the same constant; the scale is folded back into the biases at the end, so the returned SAE
acts on raw activations.
Decoder rows are renormalized after every step. Learning rate decays linearly to 0 over the last
20% of steps. BatchTopK's inference threshold is calibrated on training batches with the final
weights (`_final_threshold`). Deterministic given `seed` on CPU.

Several processes (`accelerate launch --num_processes N`, see `rewardlab.distributed`) train one SAE data-parallel:
every process draws the same batches (same seed, same data) and works on its contiguous part of each; the
initialization is the same everywhere (same seed); everything defined over the batch is taken over the whole
batch: the activation scale and b_dec's start, BatchTopK's cut (`_joint_cut`), which latents fired, the losses
(each process's mean weighted by its share of the tokens) and the gradients (summed, so every process takes the
same Adam step and renormalizes the same decoder). Each process trains on its own device (its GPU under
`accelerate launch` on GPUs); a single process trains on the CPU, communicates nothing, and its numbers are those
of the single-process trainer. The SAE is returned on the CPU.

`train_saes` trains several independent SAEs at once (the diffing pipeline trains a dozen per run): at the review
world's widths a step is a few small kernels that two intra-op threads barely speed up, while SAEs in separate
Python threads, one intra-op thread each, one per core, run side by side (the kernels release the GIL). Each SAE's
numbers are those `train_sae` gives it alone.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Hashable, Iterable, Iterator, Mapping

import torch
from tqdm.auto import tqdm

from rewardlab import distributed
from rewardlab.errors import InputError
from rewardlab.sae.model import Pairs, SAEConfig, SparseAutoencoder, SparseCodes


@dataclass
class TrainConfig:
    batch_size: int = 1024  # tokens per step
    n_tokens: int = 2_000_000  # training tokens (epochs over a tensor repeat as needed)
    lr: float = 3e-3  # Adam learning rate (why 3e-3 and not the 2023 SAE paper's 1e-3: docs/FINDINGS.md, 2026-12-01)
    aux_k: int | None = None  # AuxK latents per token; default d_in // 2
    aux_k_coefficient: float = 1.0  # AuxK loss weight (SAELens' value for this unnormalized form, see module docstring)
    dead_window: int = 50_000  # tokens without firing after which a latent counts as dead (~50 steps)
    seed: int = 0  # initialization and shuffling seed
    log_every: int = 100  # steps between history entries
    progress: bool = True  # a progress bar over steps on stderr


@dataclass
class TrainResult:
    sae: SparseAutoencoder
    history: list[dict] = field(default_factory=list)  # step, tokens, mse, aux, l0, n_dead
    tokens_per_second: float = 0.0


def _batches(acts: torch.Tensor | Iterable[torch.Tensor], cfg: TrainConfig,
             gen: torch.Generator) -> Iterator[torch.Tensor]:
    if not isinstance(acts, torch.Tensor):
        yield from acts
        return
    n_steps = max(1, cfg.n_tokens // cfg.batch_size)
    step = 0
    while True:
        order = torch.randperm(len(acts), generator=gen)
        for start in range(0, len(acts) - cfg.batch_size + 1, cfg.batch_size):
            yield acts.index_select(0, order[start:start + cfg.batch_size])  # whole rows (acts[...] copies element-wise)
            step += 1
            if step >= n_steps:
                return
        if len(acts) < cfg.batch_size:
            raise ValueError(f"{len(acts)} tokens are fewer than one batch of {cfg.batch_size}")


def _aux_k_loss(sae: SparseAutoencoder, x: torch.Tensor, pre: torch.Tensor, residual: torch.Tensor,
                dead: torch.Tensor, aux_k: int) -> torch.Tensor:
    """MSE of the dead latents' top-aux_k reconstruction of the residual [n, d_in], damped by
    min(1, n_dead / aux_k). x [n, d_in]: the SAE's input; pre [n, d_sae]: its pre-activations (without
    gradient: they rank the dead latents; the kept ones, before the ReLU, are gathered with a sparse backward
    as in `SparseAutoencoder.sparse_codes`, and decoded as a sparse sum of their W_dec rows)."""
    n, dead_idx = len(x), dead.nonzero().squeeze(1)
    k = min(aux_k, len(dead_idx))
    with torch.no_grad():
        latent = dead_idx[pre.index_select(1, dead_idx).topk(k, dim=-1, sorted=False).indices].reshape(-1)
        rows = torch.arange(n, device=x.device).repeat_interleave(k)
    pairs = Pairs(rows, latent, sae.cfg.d_sae)
    value = sae.gather_pre(x, pre, pairs)
    codes = SparseCodes(pairs, value, torch.arange(0, n * k, k, device=x.device), pre, pre.new_zeros(()))
    residual_hat = sae.decode_sparse(codes, bias=False)
    return min(1.0, len(dead_idx) / aux_k) * ((residual_hat - residual) ** 2).sum(-1).mean()


def _my_part(x: torch.Tensor) -> torch.Tensor:
    """This process's contiguous part of the rows of a batch x [n, ...] (all of x for one process)."""
    rank, world = distributed.rank_and_world()
    return x if world == 1 else x.tensor_split(world)[rank]


def _joint_cut(score: torch.Tensor, n_keep: int) -> tuple[torch.Tensor, int]:
    """BatchTopK's cut over the batch all processes' rows make together: (the n_keep-th largest selection value
    of every process's score [n_p, d_sae], n_keep summed over the processes; the same everywhere, and that sum)."""
    total = int(distributed.all_sum(torch.tensor(n_keep, device=score.device)))
    flat = score.reshape(-1)
    top = torch.full((total,), -torch.inf, device=score.device)
    top[:min(total, flat.numel())] = flat.topk(min(total, flat.numel()), sorted=False).values
    return distributed.all_gather(top).topk(total, sorted=False).values.min(), total


def _batch_cut():
    """sparse_codes' batch_cut: the joint cut when several processes split each batch, else None (its own)."""
    return _joint_cut if distributed.rank_and_world()[1] > 1 else None


def _final_threshold(sae: SparseAutoencoder, acts, scale: float, batch_size: int,
                     thresholds: torch.Tensor, max_batches: int = 64) -> torch.Tensor:
    """BatchTopK's inference threshold (in scaled units): the mean over training batches of the
    smallest kept selection value, measured with the final weights on up to `max_batches` batches of
    a training tensor, so that the inference L0 matches k. (Per-step values lag behind the weights:
    on the demo data (world without topics) their mean over the last half was 14% too high, giving
    L0 14.5 at k = 16.) For a stream, which cannot be re-read, the mean of the last 10% of per-step values."""
    if not isinstance(acts, torch.Tensor):
        return thresholds[-max(1, len(thresholds) // 10):].mean()
    starts = range(0, max(1, len(acts) - batch_size + 1), batch_size)[:max_batches]
    device = sae.W_dec.device
    return torch.stack([sae.sparse_codes(_my_part(acts[i:i + batch_size]).to(device).float() * scale,
                                         _batch_cut()).threshold
                        for i in starts]).mean()


def activation_scale(sample: torch.Tensor) -> float:
    """The constant c with mean |c x|^2 = d_in over a sample [n, d_in] (every process's sample together)."""
    return float((sample.shape[1] / distributed.all_mean((sample.float() ** 2).sum(-1))).sqrt())


def _paired(acts: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[n, 2 d_in]: each input row followed by its target row (shuffled and batched together)."""
    if not isinstance(acts, torch.Tensor) or acts.shape != targets.shape:
        raise ValueError(f"targets {tuple(targets.shape)} must be a tensor shaped like the inputs "
                         f"{tuple(getattr(acts, 'shape', ()))}: one target row per input token")
    return torch.cat([acts, targets], dim=1)


def train_sae(acts: torch.Tensor | Iterable[torch.Tensor], sae_cfg: SAEConfig,
              cfg: TrainConfig = TrainConfig(), model_cls: type = SparseAutoencoder,
              targets: torch.Tensor | None = None) -> TrainResult:
    """Train an SAE (or a subclass such as the crosscoder); returns it, acting on raw activations,
    with its training history. targets [n_tokens, d_in]: what the decoder predicts for each row of
    the tensor `acts` (default: the row itself, an autoencoder). Under several processes every one
    returns the same SAE and history (see the module docstring)."""
    rank, world = distributed.rank_and_world()
    if cfg.batch_size < world:
        raise InputError(f"a batch of {cfg.batch_size} tokens cannot be split over {world} processes",
                         fix=f"use --batch-size of at least {world}")
    device = distributed.device() or torch.device("cpu")  # several processes: each its own GPU (or the CPU)
    gen = torch.Generator().manual_seed(cfg.seed)
    sae = model_cls(sae_cfg, generator=gen).to(device)
    d = sae_cfg.d_in
    batches = _batches(acts if targets is None else _paired(acts, targets), cfg, gen)
    first = next(batches)
    mine = _my_part(first).to(device).float()
    scale = activation_scale(mine if targets is None else mine[:, :d])
    with torch.no_grad():
        sae.b_dec.copy_(distributed.all_mean(mine if targets is None else mine[:, d:]) * scale)
    # fused: one kernel per step over all parameters instead of ~10 passes each (the same update, in one loop)
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr, fused=device.type in ("cpu", "cuda"))
    n_steps = max(1, cfg.n_tokens // cfg.batch_size) if isinstance(acts, torch.Tensor) else None
    aux_k = cfg.aux_k or max(1, sae_cfg.d_in // 2)
    since_fired = torch.zeros(sae_cfg.d_sae, dtype=torch.long, device=device)
    # per-step BatchTopK thresholds, written in place into one buffer: no per-step sync, and no small tensor kept per
    # step (thousands of those pin freed blocks of the C allocator's heap, and a process's memory grows with steps)
    thresholds = torch.zeros(n_steps or 1024, device=device)
    history: list[dict] = []
    tokens, steps, t0 = 0, 0, time.perf_counter()
    sparse, batch_cut = sae_cfg.architecture != "relu", _batch_cut()

    def step_on(batch: torch.Tensor, step: int) -> None:
        nonlocal tokens, steps, thresholds
        n = len(batch)  # tokens in the whole batch, of which this process takes its part
        if n < world:
            raise InputError(f"a batch of {n} tokens cannot be split over {world} processes")
        x = _my_part(batch).to(device).float() * scale
        share = len(x) / n  # the weight of this process's token mean in the batch's mean
        x, y = (x, x) if targets is None else (x[:, :d], x[:, d:])
        if sparse:
            codes = sae.sparse_codes(x, batch_cut)
            x_hat = sae.decode_sparse(codes)
            fired = codes.fired()
        else:
            f = sae.activate(sae.pre_activations(x))
            x_hat = sae.decode(f)
            fired = (f > 0).any(0)
        mse = ((x_hat - y) ** 2).sum(-1).mean()
        since_fired.add_(n).masked_fill_(distributed.all_sum(fired.long()) > 0, 0)
        dead = since_fired >= cfg.dead_window
        n_dead = int(dead.sum())
        if not sparse:
            aux = sae_cfg.l1_coefficient * f.abs().sum(-1).mean()
        elif n_dead:
            aux = cfg.aux_k_coefficient * _aux_k_loss(sae, x, codes.pre, (y - x_hat).detach(), dead, aux_k)
        else:
            aux = torch.zeros((), device=device)
        if sae_cfg.architecture == "batchtopk":
            if step == len(thresholds):  # a stream: its length is not known in advance
                thresholds = torch.cat([thresholds, torch.zeros_like(thresholds)])
            thresholds[step] = codes.threshold
        if n_steps is not None and step >= 0.8 * n_steps:
            for g in opt.param_groups:
                g["lr"] = cfg.lr * (n_steps - step) / (0.2 * n_steps)
        opt.zero_grad(set_to_none=True)
        ((mse + aux) * share).backward()
        for p in sae.parameters():
            if p.grad is not None:
                p.grad = distributed.all_sum(p.grad)
        opt.step()
        sae.normalize_decoder()
        tokens, steps = tokens + n, steps + 1
        if step % cfg.log_every == 0:
            l0 = (float(distributed.all_sum((codes.value > 0).sum())) / n if sparse
                  else float(distributed.all_sum((f > 0).sum(-1).float().mean() * share)))
            history.append({"step": step, "tokens": tokens, "mse": float(distributed.all_sum(mse.detach() * share)),
                            "aux": float(distributed.all_sum(aux.detach() * share)), "l0": l0, "n_dead": n_dead})

    bar = tqdm(total=n_steps, desc=f"{model_cls.__name__} {sae_cfg.architecture} {sae_cfg.d_sae}", unit="step",
               leave=False, disable=not cfg.progress or rank != 0)
    step_on(first, 0)
    bar.update()
    for step, x in enumerate(batches, start=1):
        step_on(x, step)
        bar.update()
    bar.close()
    seconds = time.perf_counter() - t0
    if sae_cfg.architecture == "batchtopk":
        with torch.no_grad():
            sae.threshold.copy_(_final_threshold(sae, acts, scale, cfg.batch_size, thresholds[:steps]))
    sae.rescale_input(scale)
    sae.requires_grad_(False).to("cpu")
    return TrainResult(sae, history, tokens / seconds)


@dataclass
class SAEJob:
    """The arguments of one `train_sae` call."""

    acts: torch.Tensor | Iterable[torch.Tensor]
    sae_cfg: SAEConfig
    cfg: TrainConfig = field(default_factory=TrainConfig)
    model_cls: type = SparseAutoencoder
    targets: torch.Tensor | None = None

    def training_bytes(self) -> int:
        """Rough memory of this training besides its data: encoder and decoder weights with their gradients and
        Adam's two moments (4 float32 copies of 2 d_in d_sae weights), and one step's dense [batch, d_sae] float32
        pre-activations with about three tensors derived from them (selection scores, candidates, AuxK ranks)."""
        return 4 * 4 * (2 * self.sae_cfg.d_in * self.sae_cfg.d_sae + self.cfg.batch_size * self.sae_cfg.d_sae)

    def work(self) -> int:
        """Rough length of this training, for ordering jobs: tokens x the encoder's d_in x d_sae."""
        return self.cfg.n_tokens * self.sae_cfg.d_in * self.sae_cfg.d_sae

    def run(self) -> TrainResult:
        return train_sae(self.acts, self.sae_cfg, self.cfg, self.model_cls, self.targets)


PARALLEL_MIB = 1024  # memory (MiB, `SAEJob.training_bytes`) the SAEs `train_saes` trains at once may take together


def train_saes(jobs: Mapping[Hashable, SAEJob]) -> dict[Hashable, TrainResult]:
    """`train_sae` of every job: {key: its result}, in the jobs' order. In a single process the jobs train side by
    side in a pool of Python threads, one intra-op thread each: as many workers as the process has intra-op
    threads (more threads than cores contend for the cores and the GIL), and no more than fit in PARALLEL_MIB by
    `SAEJob.training_bytes`; the longest jobs (`SAEJob.work`) start first, so that no worker is left with a long
    job at the end. The process's intra-op threads are restored afterwards. Under several processes they train one
    after another, since each one's collectives must run in the same order everywhere."""
    if not jobs:
        return {}
    threads = torch.get_num_threads()
    fit = max(1, PARALLEL_MIB * 2 ** 20 // max(job.training_bytes() for job in jobs.values()))
    workers = min(len(jobs), threads, fit)
    if workers == 1 or distributed.rank_and_world()[1] > 1:
        return {key: job.run() for key, job in jobs.items()}

    def run(job: SAEJob) -> TrainResult:
        torch.set_num_threads(max(1, threads // workers))  # per calling thread: this job's intra-op threads
        return job.run()

    longest_first = sorted(jobs, key=lambda key: -jobs[key].work())
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="sae") as pool:
            futures = {key: pool.submit(run, jobs[key]) for key in longest_first}
            return {key: futures[key].result() for key in jobs}
    finally:
        torch.set_num_threads(threads)
