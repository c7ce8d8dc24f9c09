"""SAELens-compatible folders: `cfg.json` + `sae_weights.safetensors` (W_enc [d_in, d_sae], b_enc,
W_dec [d_sae, d_in], b_dec; plus `threshold` [d_sae] for jumprelu).

Architectures map as SAELens represents them: relu -> "standard" (tied weights are written out
untied), topk -> "topk" with k, batchtopk -> "jumprelu" with its inference threshold repeated per
latent (what SAELens itself does when saving BatchTopK). `sae_lens.SAE.load_from_disk(folder)` then
gives the same feature activations. The rewardlab config rides along in cfg.json's metadata, so
`load_sae` restores the exact object (including the architecture it was trained as).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rewardlab.errors import InputError
from rewardlab.io import atomic_path, load_tensors, save_tensors
from rewardlab.sae.model import SparseAutoencoder

SAELENS_FORMAT = "6.0.0"  # the cfg.json layout (metadata nested) SAELens reads since 6.0
SAELENS_ARCHITECTURE = {"relu": "standard", "topk": "topk", "batchtopk": "jumprelu"}


def save_sae(sae: SparseAutoencoder, folder: str | Path, metadata: dict | None = None) -> Path:
    """Write `sae` as a SAELens folder; `metadata` (e.g. model_name, context_size) goes into cfg.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = sae.cfg
    tensors = {"W_enc": sae.encoder.detach().contiguous(), "b_enc": sae.b_enc.detach(),
               "W_dec": sae.W_dec.detach().contiguous(), "b_dec": sae.b_dec.detach()}
    if cfg.architecture == "batchtopk":
        tensors["threshold"] = sae.threshold.detach().expand(cfg.d_sae).contiguous()
    save_tensors(folder / "sae_weights.safetensors", {k: v.float().cpu() for k, v in tensors.items()})
    sl_cfg = {"d_in": cfg.d_in, "d_sae": cfg.d_sae, "dtype": "float32", "device": "cpu",
              "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
              "metadata": {"sae_lens_version": SAELENS_FORMAT, "hook_name": cfg.hook_name, **(metadata or {}),
                           "rewardlab": sae.config_dict()},
              "architecture": SAELENS_ARCHITECTURE[cfg.architecture]}
    if cfg.architecture == "topk":
        sl_cfg["k"] = cfg.k
    with atomic_path(folder / "cfg.json") as tmp:
        tmp.write_text(json.dumps(sl_cfg, indent=2) + "\n", encoding="utf-8")
    return folder


def load_sae(folder: str | Path) -> SparseAutoencoder:
    """Read a folder written by `save_sae`."""
    folder = Path(folder)
    cfg_path = folder / "cfg.json"
    if not cfg_path.is_file():
        raise InputError("not an SAE folder (no cfg.json)", str(folder), "pass a folder written by rewardlab sae")
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    config = cfg.get("metadata", {}).get("rewardlab")
    if config is None:
        raise InputError("cfg.json has no rewardlab config", str(cfg_path),
                         "only folders written by rewardlab can be loaded here; use sae_lens for others")
    tensors, _ = load_tensors(folder / "sae_weights.safetensors")
    try:
        sae = SparseAutoencoder.from_config_dict(config)
    except (TypeError, ValueError, KeyError) as err:
        raise InputError(f"cfg.json's rewardlab config is not valid ({err})", str(cfg_path),
                         "re-create the folder with rewardlab sae") from None
    expected = {name: tuple(p.shape) for name, p in (("W_dec", sae.W_dec), ("W_enc", sae.W_enc),
                                                      ("b_enc", sae.b_enc), ("b_dec", sae.b_dec)) if p is not None}
    for name, shape in expected.items():
        found = tuple(tensors[name].shape) if name in tensors else None
        if found != shape:
            raise InputError(f"{name} has shape {found}, cfg.json says {shape} (d_in {sae.cfg.d_in}, "
                             f"d_sae {sae.cfg.d_sae})", str(folder / "sae_weights.safetensors"),
                             "the weights and cfg.json come from different SAEs: re-export the folder")
    with torch.no_grad():
        sae.W_dec.copy_(tensors["W_dec"])
        if sae.W_enc is not None:
            sae.W_enc.copy_(tensors["W_enc"])
        sae.b_enc.copy_(tensors["b_enc"])
        sae.b_dec.copy_(tensors["b_dec"])
        if "threshold" in tensors:
            sae.threshold.fill_(float(tensors["threshold"][0]))
    return sae.requires_grad_(False)
