"""TransformerLens-style site names on plain Hugging Face decoder models, with capture and intervention.

A site is one activation of shape [batch, seq, d_model]:

    blocks.{L}.hook_resid_pre    input to block L                     (== output_hidden_states[L])
    blocks.{L}.hook_attn_out     output of block L's attention module (first element of its tuple)
    blocks.{L}.hook_mlp_out      output of block L's MLP module
    blocks.{L}.hook_resid_post   output of block L                    (== resid_pre of block L+1)
    ln_final.hook_out            output of the final norm             (== output_hidden_states[-1])

ln_final.hook_out is the final norm's output, after its weight and bias: what the unembedding reads.
TransformerLens has no hook there; its `ln_final.hook_normalized` is the point before the weight and
bias, so rewardlab does not use that name (asking for it is an InputError that says so).

resid_post of the last block is the raw block output, before the final norm (Hugging Face's last
hidden state is after it). In eval mode resid_post = resid_pre + attn_out + mlp_out for GPT-2, the
Llama family and GPT-NeoX with or without parallel residual (dropout breaks it in train mode).

Families are looked up by `config.model_type` in `LAYOUTS`: module paths relative to the model's
body (`model.base_model`), so causal LMs, sequence classifiers and bare models all resolve. A family
whose blocks run attention then MLP needs one line, e.g.

    LAYOUTS["phi3"] = Layout(blocks="layers", final_norm="norm", attn="self_attn", mlp="mlp")

A model type missing from the table gets the first layout whose modules all exist; its resid_pre
and resid_post are then exact, while attn_out and mlp_out add up to resid_post only if its blocks
add the module outputs straight to the residual stream (not so with extra post-norms, as in Gemma 2).

Position masks (`positions_mask` of add_vector, replace_with, project_out) say where an edit applies
in each forward pass: None = every position of every pass (in KV-cached generation: the whole
prompt, then each new token); a bool tensor [batch, seq] = those positions of a pass of exactly that
shape (a pass of another length, such as a cached generation step, is an InputError); a callable
activation [batch, seq, d_model] -> bool [batch, seq] = decided anew in each pass, e.g.
`last_position` (in generation: exactly the positions that choose new tokens).

`capture` and `intervene` are context managers that remove every hook they registered on exit, also
on exceptions. (Transformers installs its own permanent hooks the first time a model is asked for
`output_hidden_states`; those are not ours and stay.)
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Union

import torch
from torch import nn

from rewardlab.errors import InputError

KINDS = ("resid_pre", "attn_out", "mlp_out", "resid_post", "ln_final")  # order of computation
_SITE = re.compile(r"blocks\.(-?\d+)\.hook_(resid_pre|attn_out|mlp_out|resid_post)")
_FINAL = "ln_final.hook_out"
_FIX = "use blocks.L.hook_resid_pre|hook_attn_out|hook_mlp_out|hook_resid_post or ln_final.hook_out"


@dataclass(frozen=True)
class Layout:
    """Where a family keeps its modules: `blocks` and `final_norm` relative to the model's body,
    `attn` and `mlp` relative to one block."""

    blocks: str
    final_norm: str
    attn: str
    mlp: str


_LLAMA = Layout(blocks="layers", final_norm="norm", attn="self_attn", mlp="mlp")
LAYOUTS: dict[str, Layout] = {
    "gpt2": Layout(blocks="h", final_norm="ln_f", attn="attn", mlp="mlp"),
    "gpt_neox": Layout(blocks="layers", final_norm="final_layer_norm", attn="attention", mlp="mlp"),
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
}


@dataclass(frozen=True)
class Site:
    """A parsed site: block index `layer` (n_layers for ln_final, which comes after the last block)
    and `kind`, one of KINDS."""

    layer: int
    kind: str

    @property
    def name(self) -> str:
        return _FINAL if self.kind == "ln_final" else f"blocks.{self.layer}.hook_{self.kind}"

    @property
    def depth(self) -> tuple[int, int]:
        """Sort key: sites with a larger depth are computed later in the forward pass."""
        return self.layer, KINDS.index(self.kind)


def parse_site(name: str, n_layers: int) -> Site:
    """Parse a site name for a model with `n_layers` blocks; InputError if unknown or out of range."""
    if name == _FINAL:
        return Site(n_layers, "ln_final")
    if name == "ln_final.hook_normalized":
        raise InputError("ln_final.hook_normalized is TransformerLens's point before the final norm's weight and "
                         "bias, which rewardlab does not capture", fix="use ln_final.hook_out, the final norm's "
                         "output (after its weight and bias, what the unembedding reads)")
    match = _SITE.fullmatch(name)
    if match is None:
        raise InputError(f"unknown site {name!r}", fix=_FIX)
    layer = int(match[1])
    if not 0 <= layer < n_layers:
        raise InputError(f"layer {layer} does not exist (site {name!r})",
                         fix=f"this model has {n_layers} block{'s' * (n_layers != 1)}: layers 0..{n_layers - 1}")
    return Site(layer, match[2])


def _fits(body: nn.Module, layout: Layout) -> bool:
    try:
        blocks = body.get_submodule(layout.blocks)
        body.get_submodule(layout.final_norm)
        blocks[0].get_submodule(layout.attn), blocks[0].get_submodule(layout.mlp)
    except (AttributeError, IndexError, TypeError):
        return False
    return isinstance(blocks, nn.ModuleList)


def _layout(model: nn.Module) -> Layout:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    candidates = [LAYOUTS[model_type]] if model_type in LAYOUTS else list(LAYOUTS.values())
    for layout in candidates:
        if _fits(model.base_model, layout):
            return layout
    raise InputError(f"no site layout fits {type(model).__name__} (model_type {model_type!r})",
                     fix="add its module paths to rewardlab.sites.LAYOUTS (see the module docstring)")


def block_modules(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks, in order."""
    return model.base_model.get_submodule(_layout(model).blocks)


def final_norm(model: nn.Module) -> nn.Module:
    """The norm applied after the last block."""
    return model.base_model.get_submodule(_layout(model).final_norm)


def unembed(model: nn.Module) -> nn.Module:
    """The output embedding (lm_head / embed_out), a Linear d_model -> vocab."""
    head = model.get_output_embeddings()
    if head is None:
        raise InputError(f"{type(model).__name__} has no unembedding", fix="load it as a causal LM")
    return head


@torch.no_grad()
def logit_lens(model: nn.Module, vectors: torch.Tensor) -> torch.Tensor:
    """(n, d) residual-stream directions -> (n, V) logits through `model`'s final norm and unembedding,
    less what both give the zero vector (their biases)."""
    norm, head = final_norm(model), unembed(model)
    zero = torch.zeros_like(vectors[:1])
    return head(norm(vectors)) - head(norm(zero))


def n_layers(model: nn.Module) -> int:
    return len(block_modules(model))


def d_model(model: nn.Module) -> int:
    return model.config.hidden_size


def all_sites(model: nn.Module, kinds: Iterable[str] = KINDS) -> list[str]:
    """Names of every site of the given kinds, in order of computation."""
    kinds = tuple(kinds)
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise InputError(f"unknown site kinds {sorted(unknown)}", fix=f"kinds are {', '.join(KINDS)}")
    names = [Site(layer, kind).name for layer in range(n_layers(model)) for kind in KINDS[:4] if kind in kinds]
    return names + ([_FINAL] if "ln_final" in kinds else [])


Edit = Callable[[torch.Tensor], Union[torch.Tensor, None]]  # activation -> new one, or None: unchanged
Intervention = Callable[[torch.Tensor], torch.Tensor]  # activation [b, s, d] -> new activation [b, s, d]
PositionsMask = Union[torch.Tensor, Callable[[torch.Tensor], torch.Tensor], None]  # see module docstring


def _register(model: nn.Module, site: Site, edit: Edit) -> torch.utils.hooks.RemovableHandle:
    """Hook `edit` onto the module behind `site`."""
    if site.kind == "ln_final":
        return final_norm(model).register_forward_hook(_output_hook(edit))
    layout = _layout(model)
    block = block_modules(model)[site.layer]
    if site.kind == "resid_pre":
        return block.register_forward_pre_hook(_input_hook(edit), with_kwargs=True)
    module = {"attn_out": block.get_submodule(layout.attn), "mlp_out": block.get_submodule(layout.mlp),
              "resid_post": block}[site.kind]
    return module.register_forward_hook(_output_hook(edit))


def _input_hook(edit: Edit):
    def hook(module, args, kwargs):  # hidden_states arrives positionally or as a keyword
        if args:
            new = edit(args[0])
            return None if new is None else ((new, *args[1:]), kwargs)
        new = edit(kwargs["hidden_states"])
        return None if new is None else (args, {**kwargs, "hidden_states": new})
    return hook


def _output_hook(edit: Edit):
    def hook(module, args, output):  # a tensor, or a tuple whose first element is the activation
        is_tuple = isinstance(output, tuple)
        new = edit(output[0] if is_tuple else output)
        if new is None:
            return None
        return (new, *output[1:]) if is_tuple else new
    return hook


def _parse_all(model: nn.Module, sites: str | Iterable[str]) -> list[Site]:
    """Distinct parsed sites, in order of computation."""
    names = [sites] if isinstance(sites, str) else list(sites)
    if not names:
        raise InputError("no sites given", fix=_FIX)
    n = n_layers(model)
    return sorted({parse_site(name, n) for name in names}, key=lambda s: s.depth)


class _StopForward(Exception):
    """Raised by a capture hook to end the forward pass after the deepest requested site."""


@contextmanager
def capture(model: nn.Module, sites: str | Iterable[str], *,
            stop_early: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Record sites during forward passes inside the block into the yielded {name: [b, s, d]} dict.

    Tensors are detached, in the model's dtype; a later forward pass overwrites earlier entries
    (during generation the dict holds the last step). With `stop_early` the pass is aborted right
    after the deepest site (nothing later is computed) and the abort is swallowed on exit, so the
    forward call must be the last statement of the block; `run_with_capture` does this for you.
    """
    parsed = _parse_all(model, sites)
    acts: dict[str, torch.Tensor] = {}

    def recorder(site: Site) -> Edit:
        def record(act: torch.Tensor) -> None:
            acts[site.name] = act.detach()
            if stop_early and site == parsed[-1]:
                raise _StopForward
        return record

    handles = []
    try:
        for site in parsed:
            handles.append(_register(model, site, recorder(site)))
        yield acts
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()


def run_with_capture(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                     sites: str | Iterable[str], stop_early: bool = True) -> dict[str, torch.Tensor]:
    """One no-grad forward pass; returns {site name: [batch, seq, d_model]}."""
    with torch.no_grad(), capture(model, sites, stop_early=stop_early) as acts:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    missing = [s.name for s in _parse_all(model, sites) if s.name not in acts]
    if missing:
        raise RuntimeError(f"sites {missing} did not run; does LAYOUTS fit {type(model).__name__}?")
    return acts


@contextmanager
def intervene(model: nn.Module, site: str, fn: Intervention) -> Iterator[None]:
    """Replace the activation at `site` by fn(activation) in every forward pass inside the block.

    fn gets [batch, seq, d_model] and returns the same shape; during KV-cached generation the later
    passes carry only the new token, so seq is 1 there. Builders: add_vector, replace_with, project_out.
    """
    def checked(act: torch.Tensor) -> torch.Tensor:
        new = fn(act)
        if new.shape != act.shape:
            raise InputError(f"intervention at {site} returned shape {tuple(new.shape)}, "
                             f"expected {tuple(act.shape)}")
        return new

    handle = _register(model, parse_site(site, n_layers(model)), checked)
    try:
        yield
    finally:
        handle.remove()


def _masked(edit: Intervention, positions_mask: PositionsMask) -> Intervention:
    """Apply `edit` only where the mask is True, per forward pass (module docstring: position masks)."""
    def fn(act: torch.Tensor) -> torch.Tensor:
        new = edit(act)
        if positions_mask is None:
            return new
        mask = positions_mask(act) if callable(positions_mask) else positions_mask
        if tuple(mask.shape) != tuple(act.shape[:2]):
            raise InputError(f"positions_mask has shape {tuple(mask.shape)}, the activation is "
                             f"[batch, seq] = {tuple(act.shape[:2])}",
                             fix="in KV-cached generation use a callable mask, e.g. sites.last_position")
        return torch.where(mask.to(act.device, torch.bool).unsqueeze(-1), new, act)
    return fn


def last_position(act: torch.Tensor) -> torch.Tensor:
    """Mask of each pass's last position: in generation exactly the positions that pick new tokens
    (with left padding)."""
    mask = torch.zeros(act.shape[:2], dtype=torch.bool, device=act.device)
    mask[:, -1] = True
    return mask


def add_vector(vec: torch.Tensor, positions_mask: PositionsMask = None) -> Intervention:
    """act + vec at the masked positions. vec [d_model], or [R, d_model]: one vector per copy, the batch's
    rows being R equal consecutive groups (copy-major, as `rewardlab.sampling.generate` lays out copies)."""
    if vec.ndim == 1:
        return _masked(lambda act: act + vec.to(act.device, act.dtype), positions_mask)

    def per_copy(act: torch.Tensor) -> torch.Tensor:
        if act.shape[0] % len(vec):
            raise InputError(f"{act.shape[0]} rows cannot be split into {len(vec)} copies, one per vector")
        return act + vec.to(act.device, act.dtype).repeat_interleave(act.shape[0] // len(vec), 0)[:, None, :]
    return _masked(per_copy, positions_mask)


def replace_with(tensor: torch.Tensor, positions_mask: PositionsMask = None) -> Intervention:
    """Replace the activation by `tensor` (broadcastable to [batch, seq, d_model]) at the masked positions."""
    def replace(act: torch.Tensor) -> torch.Tensor:
        try:
            return tensor.to(act.device, act.dtype).expand_as(act)
        except RuntimeError:
            raise InputError(f"replacement of shape {tuple(tensor.shape)} does not fit the "
                             f"activation {tuple(act.shape)}") from None
    return _masked(replace, positions_mask)


def project_out(direction: torch.Tensor, positions_mask: PositionsMask = None) -> Intervention:
    """Remove the component along `direction` ([d_model]; any norm) at the masked positions."""
    unit = direction / direction.norm()

    def project(act: torch.Tensor) -> torch.Tensor:
        u = unit.to(act.device, act.dtype)
        return act - (act @ u).unsqueeze(-1) * u
    return _masked(project, positions_mask)
