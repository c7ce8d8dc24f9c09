"""Several processes under Accelerate, for the jobs that split their data (activation caching, SAE training).

`accelerate launch --num_processes N` (or `torchrun --nproc_per_node N`) describes the processes in the
environment (WORLD_SIZE, RANK, MASTER_ADDR/PORT); Accelerate's `PartialState` joins the process group from
it (NCCL on GPUs, gloo on CPU). With one process nothing here touches Accelerate and every function is
the identity, so single-process runs are exactly what they were.
"""

from __future__ import annotations

import os

import torch


def _state():
    """Accelerate's PartialState when the launcher started several processes, else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    # Accelerate joins a CPU (gloo) group only when told to run on the CPU: `accelerate launch --cpu`, or no GPU
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())


def rank_and_world() -> tuple[int, int]:
    """(this process's index, number of processes); (0, 1) for a single process."""
    state = _state()
    return (0, 1) if state is None else (state.process_index, state.num_processes)


def device() -> torch.device | None:
    """This process's device when several run (its own GPU, or the CPU); None for a single process."""
    state = _state()
    if state is None:
        return None
    # Accelerate says cpu:0, which transformers' from_pretrained takes for an accelerator (measured: a 135M model
    # then peaks at 1.45 GB of RSS instead of 0.44 GB)
    return torch.device("cpu") if state.device.type == "cpu" else state.device


def barrier() -> None:
    """Wait until every process gets here."""
    if (state := _state()) is not None:
        state.wait_for_everyone()


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """The elementwise sum of `t` over the processes (a new tensor; `t` itself for one process)."""
    if _state() is None:
        return t
    from accelerate.utils import reduce

    return reduce(t, reduction="sum")


def all_gather(t: torch.Tensor) -> torch.Tensor:
    """Every process's `t` (same shape on all) concatenated along dim 0 in process order."""
    if _state() is None:
        return t
    from accelerate.utils import gather

    return gather(t)


def all_mean(x: torch.Tensor) -> torch.Tensor:
    """The mean over the rows of every process's x [n_p, ...] together (x.mean(0) for one process)."""
    if _state() is None:
        return x.mean(0)
    return all_sum(x.sum(0)) / all_sum(torch.tensor(float(len(x)), device=x.device))
