"""Convert a GGUF checkpoint into a plain Hugging Face model folder (`rewardlab models convert`).

transformers reads GGUF files (with the `gguf` package) and de-quantizes them, but refuses
`save_pretrained` on the result ("quantized with gguf and is not serializable"). The model is
rebuilt from its config without the GGUF quantization entry, the de-quantized weights are loaded
into it, and it is saved with its tokenizer (chat template included). The folder then loads with
`AutoModelForCausalLM.from_pretrained` like any other.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import torch

from rewardlab.errors import InputError
from rewardlab.models import pick_dtype


def convert_gguf(gguf_file: str | Path, out: str | Path, dtype: str = "float32") -> Path:
    """Write the de-quantized model of `gguf_file` and its tokenizer to the folder `out`; returns it."""
    import importlib.util

    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file, out = Path(gguf_file), Path(out)
    if not gguf_file.is_file():
        raise InputError("GGUF file not found", str(gguf_file), "give the path of a .gguf file")
    with gguf_file.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise InputError("not a GGUF file (it does not start with the GGUF magic bytes)", str(gguf_file),
                             "give the path of a .gguf file")
    if importlib.util.find_spec("gguf") is None:
        raise InputError("reading GGUF files needs the `gguf` package", str(gguf_file), "pip install gguf")
    if (out / "config.json").exists():
        raise InputError("the output folder already holds a model", str(out), "choose a new folder, or remove it")
    source = dict(pretrained_model_name_or_path=str(gguf_file.parent), gguf_file=gguf_file.name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(**source)
        loaded = AutoModelForCausalLM.from_pretrained(**source, dtype=pick_dtype(dtype, torch.device("cpu")))
    except (ValueError, OSError, KeyError, IndexError, struct.error) as err:  # struct: a truncated file
        raise InputError(f"transformers cannot read this GGUF file ({err})", str(gguf_file),
                         "use a GGUF of an architecture transformers supports") from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights below are de-quantized
    model = AutoModelForCausalLM.from_config(config, dtype=loaded.dtype)
    model.load_state_dict(loaded.state_dict(), strict=True)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)  # left by a killed conversion
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(out)
    return out
