"""LoRA adapters (through `peft`) and memory controls shared by PPO and DPO.

With LoRA, one copy of the base weights serves twice: the policy is the base with the adapter on
(W + (alpha / r) B A on every targeted linear layer; B starts at 0, so the policy starts as the base),
the frozen reference is the same modules with the adapter off (`AdapterOff`), which computes exactly
the base's forward pass. Only the adapter (and PPO's value head) is trained. The written policy
folder is a plain Hugging Face model with the adapter merged in; the adapter is saved beside it.

`peft` is an optional dependency (`pip install rewardlab[lora]`); it is imported only when LoRA is on.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import torch
from torch import nn

from rewardlab.errors import InputError

ADAPTER_DIR = "adapter"


def lora_config(model: nn.Module, rank: int, alpha: float, target_modules: str):
    """peft's LoraConfig for `model`: rank `rank`, scale alpha / rank, no dropout (PPO's ratio check needs
    the same forward pass twice); `target_modules` "all-linear" (every linear layer but the output head:
    attention and MLP projections) or comma-separated module names (e.g. "q_proj,v_proj")."""
    try:
        from peft import LoraConfig
    except ImportError as e:
        raise InputError("LoRA needs the peft package", "lora_rank", 'pip install "rewardlab[lora]"') from e
    from transformers.pytorch_utils import Conv1D

    targets = target_modules if target_modules == "all-linear" else [
        t.strip() for t in target_modules.split(",") if t.strip()]
    names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D))}
    if targets != "all-linear" and (not targets or set(targets) - names):
        raise InputError(f"lora_target_modules {target_modules!r} names no linear layer of the model "
                         f"({', '.join(sorted(set(targets) - names)) or 'empty'})", "lora_target_modules",
                         f"use all-linear or some of {', '.join(sorted(names))}")
    fan_in_fan_out = any(isinstance(m, Conv1D) for m in model.modules())  # GPT-2 stores its weights transposed
    return LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0, bias="none",
                      fan_in_fan_out=fan_in_fan_out, task_type="CAUSAL_LM")


def add_lora(model: nn.Module, rank: int, alpha: float, target_modules: str):
    """`model` with a fresh LoRA adapter injected in place (base weights frozen, adapter float32 and
    trainable); returns peft's PeftModel (its `.base_model.model` is `model` itself, adapter inside)."""
    from peft import get_peft_model

    config = lora_config(model, rank, alpha, target_modules)
    with checkpointing_deprecations_ignored():
        return get_peft_model(model, config)


@contextlib.contextmanager
def checkpointing_deprecations_ignored():
    """Silence transformers' FutureWarnings about its renamed `gradient_checkpointing_*` methods, which peft
    and TRL call themselves (our own code uses `activation_checkpointing_enable`)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*deprecated", category=FutureWarning)
        yield


class AdapterOff(nn.Module):
    """The reference view of a LoRA policy: the same modules (no second copy of the weights) run with the
    adapter disabled, which is exactly the base model's forward pass."""

    def __init__(self, peft_model):
        super().__init__()
        self.model = peft_model.base_model.model  # shared, not copied
        object.__setattr__(self, "_peft", peft_model)  # not a submodule: its parameters are the model's

    @property
    def config(self):
        return self.model.config

    def forward(self, *args, **kwargs):
        with self._peft.disable_adapter():
            return self.model(*args, **kwargs)


def save_lora(peft_model, out: Path) -> nn.Module:
    """Save the adapter to `out/adapter` and return the merged plain model (base + (alpha / r) B A,
    merged in place: call it last)."""
    with checkpointing_deprecations_ignored():
        peft_model.save_pretrained(out / ADAPTER_DIR)
        return peft_model.merge_and_unload()


def mark_checkpointed_layers(model: nn.Module) -> int:
    """Turn on transformers' activation checkpointing (`activation_checkpointing_enable`, non-reentrant) and
    flag its checkpointable layers as training (not their submodules) so it applies while every dropout
    stays off: each layer's activations are recomputed in the backward pass, numbers unchanged. Returns the
    number of checkpointed layers."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    model.activation_checkpointing_enable()
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    for layer in layers:
        layer.training = True  # only the flag the checkpointing reads; submodules keep eval mode
    if not layers:
        raise InputError("this model has no layers transformers can checkpoint", "gradient_checkpointing",
                         "turn gradient_checkpointing off")
    return len(layers)


def trainable(model: nn.Module) -> list[torch.nn.Parameter]:
    """The parameters that require gradients, in module order, each once (tied weights are one)."""
    return [p for p in model.parameters() if p.requires_grad]
