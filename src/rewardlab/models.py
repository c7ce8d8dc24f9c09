"""Load models and tokenizers by Hugging Face name or local folder; pair a base with a post-trained model.

Every loader returns the model in eval mode on the chosen device and dtype. `trust_remote_code` is
off unless asked for. A tokenizer without a pad token gets its eos token as pad token (and the
model config's pad_token_id follows), so batches can be padded; attention masks keep the padding
out of every computation. A tokenizer is loaded with its chat-template setting (auto | on | off,
`rewardlab.text.set_chat_template`), which every prompt encoder then follows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer,
                          PreTrainedModel, PreTrainedTokenizerBase)

from rewardlab.errors import InputError
from rewardlab.text import config_context_length, set_chat_template, set_context_length

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
          "fp16": torch.float16, "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
AUTO_CLASSES = {"causal-lm": AutoModelForCausalLM, "sequence-classification": AutoModelForSequenceClassification}
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")  # "gpt2", "EleutherAI/pythia-70m"
_LOAD_ERRORS = (OSError, ValueError, RuntimeError, KeyError, ImportError, SafetensorError)  # last: truncated weights
_LOAD_FIX = ("give a local folder saved with save_pretrained, or a Hugging Face model name (needs network); "
             "pass trust_remote_code=True only for a model you trust that needs its own code")


def pick_device(pref: str | torch.device | None = None) -> torch.device:
    """`pref` None or "auto": cuda if available, else cpu; otherwise a torch device ("cpu", "cuda:1", "mps")."""
    if pref is None or pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(pref)
    except (RuntimeError, TypeError):
        raise InputError(f"unknown device {pref!r}", fix="use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {pref!r} was asked for, but CUDA is not available", fix="use cpu or auto")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise InputError(f"device {pref!r} does not exist: {torch.cuda.device_count()} GPU(s) visible",
                         fix="use cuda:0 .. cuda:N-1")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError("device 'mps' was asked for, but MPS is not available", fix="use cpu or auto")
    return device


def pick_dtype(pref: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """`pref` None or "auto": bfloat16 on a GPU that supports it (else float16), float32 elsewhere.

    Training code that needs full precision on a GPU should ask for "float32".
    """
    if isinstance(pref, torch.dtype):
        return pref
    if pref is None or pref == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if pref.lower() not in DTYPES:
        raise InputError(f"unknown dtype {pref!r}", fix=f"use auto or one of {', '.join(DTYPES)}")
    return DTYPES[pref.lower()]


def _source(name_or_path: str | Path, *, model: bool = True) -> str:
    """The local folder if it exists, else a Hub name; InputError for a local path that is missing, or
    (`model`) a local folder without a config.json."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise InputError("expected a model folder, found a file", str(name_or_path), _LOAD_FIX)
        if model and not (path / "config.json").is_file():
            raise InputError("no config.json: not a Hugging Face model folder", str(name_or_path), _LOAD_FIX)
        return str(path)
    if isinstance(name_or_path, Path) or not _HUB_NAME.fullmatch(str(name_or_path)):
        raise InputError("model folder not found", str(name_or_path), "check the path")
    return str(name_or_path)


def _load_error(what: str, name_or_path: str | Path, err: Exception) -> InputError:
    first_line = (str(err).strip().splitlines() or [""])[0]
    return InputError(f"cannot load the {what} ({type(err).__name__}: {first_line})", str(name_or_path),
                      _LOAD_FIX)


def load_tokenizer(name_or_path: str | Path, *, trust_remote_code: bool = False,
                   chat_template: str = "auto") -> PreTrainedTokenizerBase:
    """The tokenizer of a local folder or Hub model; pad token falls back to eos; prompts rendered by its
    chat template per `chat_template` (auto | on | off)."""
    source = _source(name_or_path, model=False)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except _LOAD_ERRORS as err:
        raise _load_error("tokenizer", name_or_path, err) from err
    if not tokenizer.vocab_size:  # transformers builds an empty tokenizer from a folder with no tokenizer files
        raise InputError("no tokenizer files (tokenizer.json, vocab.json, ...): the tokenizer would be empty",
                         str(name_or_path), "save the tokenizer into the folder (tokenizer.save_pretrained)")
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    set_context_length(tokenizer, _context_of_folder(source, trust_remote_code))
    return set_chat_template(tokenizer, chat_template)


def _context_of_folder(source: str, trust_remote_code: bool) -> int | None:
    """The context length in the model config beside a tokenizer; None without a readable config."""
    try:
        return config_context_length(AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code))
    except _LOAD_ERRORS:
        return None


def _load_weights(name_or_path: str | Path, tokenizer: PreTrainedTokenizerBase, *, device=None, dtype=None,
                  trust_remote_code: bool = False, kind: str = "causal-lm") -> PreTrainedModel:
    if kind not in AUTO_CLASSES:
        raise InputError(f"unknown model kind {kind!r}", fix=f"use one of {', '.join(AUTO_CLASSES)}")
    source = _source(name_or_path)
    device = pick_device(device)
    try:
        model = AUTO_CLASSES[kind].from_pretrained(source, dtype=pick_dtype(dtype, device), device_map=str(device),
                                                   trust_remote_code=trust_remote_code)
    except _LOAD_ERRORS as err:
        raise _load_error(f"{kind} model", name_or_path, err) from err
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


def load_model(name_or_path: str | Path, *, device: str | torch.device | None = None,
               dtype: str | torch.dtype | None = None, trust_remote_code: bool = False,
               kind: str = "causal-lm", chat_template: str = "auto") -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) from a local folder or Hub name; kind "causal-lm" or "sequence-classification";
    `chat_template` as `load_tokenizer`."""
    _source(name_or_path)
    tokenizer = load_tokenizer(name_or_path, trust_remote_code=trust_remote_code, chat_template=chat_template)
    model = _load_weights(name_or_path, tokenizer, device=device, dtype=dtype,
                          trust_remote_code=trust_remote_code, kind=kind)
    return model, tokenizer


def check_same_vocabulary(a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase,
                          names: tuple[str, str] = ("base", "post")) -> None:
    """InputError naming a few differing tokens unless both tokenizers map the same tokens to the same ids."""
    va, vb = a.get_vocab(), b.get_vocab()
    if va == vb:
        return
    only_a, only_b = sorted(va.keys() - vb.keys()), sorted(vb.keys() - va.keys())
    moved = sorted(t for t in va.keys() & vb.keys() if va[t] != vb[t])
    parts = [f"{len(tokens)} {label} (e.g. {', '.join(map(repr, tokens[:5]))})"
             for tokens, label in ((only_a, f"tokens only in {names[0]}"), (only_b, f"tokens only in {names[1]}"),
                                   (moved, "tokens with different ids")) if tokens]
    raise InputError("the tokenizers' vocabularies differ: " + "; ".join(parts), f"{names[0]} vs {names[1]}",
                     "compare a post-trained model with the base model it was trained from")


@dataclass
class ModelPair:
    """A base model and its post-trained version, sharing one tokenizer."""

    base: PreTrainedModel
    post: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase

    def __post_init__(self):
        sizes = [m.get_input_embeddings().num_embeddings for m in (self.base, self.post)]
        if sizes[0] != sizes[1]:
            raise InputError(f"the models' vocabularies differ: base embeds {sizes[0]} tokens, post {sizes[1]}",
                             fix="compare a post-trained model with the base model it was trained from")
        shapes = [architecture(m.config) for m in (self.base, self.post)]
        if shapes[0] != shapes[1]:
            raise InputError(f"the models' architectures differ: base {shapes[0]}, post {shapes[1]}",
                             fix="compare a post-trained model with the base model it was trained from")

    @classmethod
    def load(cls, base: str | Path, post: str | Path, chat_template: str = "auto", **kw) -> ModelPair:
        """Load both (keywords as load_model); the tokenizers are checked before any weights load; the
        pair's tokenizer is the base's, with the `chat_template` setting."""
        trust = kw.get("trust_remote_code", False)
        base_tok = load_tokenizer(base, trust_remote_code=trust, chat_template=chat_template)
        post_tok = load_tokenizer(post, trust_remote_code=trust)
        check_same_vocabulary(base_tok, post_tok, (model_id(base), model_id(post)))
        return cls(_load_weights(base, base_tok, **kw), _load_weights(post, base_tok, **kw), base_tok)


def architecture(config) -> dict:
    """What a post-trained model shares with its base: family, width, depth and heads."""
    return {k: getattr(config, k, None) for k in ("model_type", "hidden_size", "num_hidden_layers",
                                                  "num_attention_heads")}


def pair_ids(base: str | Path, post: str | Path) -> tuple[str, str]:
    """`model_id`s of a base and a post model that tell them apart: two local folders of one name
    ("world-a/base" and "world-b/base") are named with their parent folders."""
    ids = model_id(base), model_id(post)
    if ids[0] != ids[1] or not all(Path(p).exists() for p in (base, post)):
        return ids
    folders = [Path(p).expanduser().resolve() for p in (base, post)]
    return tuple(f"{f.parent.name}/{f.name}" for f in folders)


def model_id(path_or_name: str | Path) -> str:
    """Short name for manifests: a local folder's name ("base"), or the Hub name as given."""
    text = str(path_or_name).rstrip("/\\")
    path = Path(text).expanduser()
    return path.resolve().name if path.exists() else text


def model_folder(path: str | Path) -> str:
    """A Hugging Face model folder: a training run's `policy/` subfolder, else `path` itself; a name
    with no local folder is returned as given (a Hub name)."""
    if not Path(path).exists():
        return str(path)
    for candidate in (Path(path) / "policy", Path(path)):
        if (candidate / "config.json").is_file():
            return str(candidate)
    raise InputError("no Hugging Face model folder (config.json) here or in policy/", str(path),
                     "give a model folder or a training run folder")
