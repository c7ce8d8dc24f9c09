"""The `rewardlab` command. It only parses arguments and delegates; the work lives in the modules.

A subcommand that runs a method takes its options from the method's config dataclass
(`add_config_args`): the option's type, choices and default are the field's, its help text the field's
doc comment. Only the options of the subcommand named on the command line are built, and handlers
import their modules lazily, so `rewardlab --help` stays fast. Bad input raises `InputError`, printed
here as one message with exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import math
import sys
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from rewardlab.config import field_docs
from rewardlab.errors import InputError

T = TypeVar("T")
Handler = Callable[[argparse.Namespace], None]


# --- argparse types ---

def _count(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(text, 1)


def _count0(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
    return value


def _positive(text: str) -> float:
    """argparse type: a finite number > 0."""
    return _number_in(text, low_open=True)


def _nonnegative(text: str) -> float:
    """argparse type: a finite number >= 0."""
    return _number_in(text, low_open=False)


def _number_in(text: str, low_open: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (0 < value if low_open else 0 <= value) or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number {'above' if low_open else 'at least'} 0, got {text}")
    return value


def _out_folder(text: str) -> str:
    """argparse type: an output folder path that is not an existing file."""
    if Path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is an existing file; give a folder path")
    return text


def _out_file(text: str) -> str:
    """argparse type: an output file path that is not an existing folder."""
    if Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file path")
    return text


_ITEMS = {int: "integers", float: "finite numbers", str: "names"}
_LIST = "A,B,..."  # metavar of a comma-separated list


def _comma_list(item: type, container: type, size: int | None = None) -> Callable[[str], Sequence]:
    """argparse type: comma-separated `item`s (`size` of them, when set) as a `container` (list or tuple).
    Write `--alphas=-1,0,1` when the first value is negative."""
    def parse(text: str) -> Sequence:
        try:
            values = [item(x.strip()) for x in text.split(",") if x.strip()]
        except ValueError:
            values = []
        if not values or not all(math.isfinite(v) for v in values if isinstance(v, float)):
            raise argparse.ArgumentTypeError(f"expected comma-separated {_ITEMS[item]}, got {text!r}")
        if size is not None and len(values) != size:
            raise argparse.ArgumentTypeError(f"expected {size} comma-separated {_ITEMS[item]}, got {text!r}")
        return container(values)

    return parse


# --- options generated from config dataclasses ---

# Range checks by field name (one name means one thing everywhere), for configs without a `validate()`;
# configs with one check their own ranges, with their own messages.
_RANGES: dict[str, Callable[[str], Any]] = {
    **dict.fromkeys(("batch_size", "max_new_tokens", "num_samples", "n_sources", "shard_rows", "n_boot", "k",
                     "n_tokens", "top_positions", "top_tokens"), _count),
    **dict.fromkeys(("n_random", "top_k", "context_tokens"), _count0),
    **dict.fromkeys(("lr", "beta"), _positive),
    "l1_coefficient": _nonnegative,
}

# Allowed values by field name: (module, name of its tuple or dict of the values).
_CHOICES = {"architecture": ("rewardlab.sae.model", "ARCHITECTURES"),
            "chat_template": ("rewardlab.config", "CHAT_TEMPLATE_MODES"),
            "site_kind": ("rewardlab.sae.diffing", "SAE_SITE_KINDS"),
            "where": ("rewardlab.steer", "WHERE"),
            "dtype": ("rewardlab.acts", "STORE_DTYPES"),
            "kl_estimator": ("rewardlab.rl.config", "KL_ESTIMATORS"),
            "value_head": ("rewardlab.rl.config", "VALUE_HEAD_KINDS")}


@dataclasses.dataclass(frozen=True)
class ConfigOption:
    """One leaf field of a config dataclass, as a command-line option."""

    path: tuple[str, ...]  # field names from the config down to the leaf, e.g. ("train", "seed")
    name: str  # option name without dashes, e.g. "train_seed"
    annotation: Any
    default: Any  # None where the field has no default
    doc: str

    @property
    def dest(self) -> str:
        return ".".join(self.path)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def config_options(cls: type) -> Iterator[ConfigOption]:
    """The options of dataclass `cls`. A nested dataclass field is flattened into its own fields; one whose
    name the outer config also has takes the parent's name as prefix (DiffConfig.train.seed: --train-seed)."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    outer = {f.name for f in dataclasses.fields(cls)}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            for o in config_options(hints[f.name]):
                name = f"{f.name}_{o.name}" if o.name in outer else o.name
                yield dataclasses.replace(o, path=(f.name, *o.path), name=name)
            continue
        default = (f.default if f.default is not dataclasses.MISSING
                   else f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        yield ConfigOption((f.name,), f.name, hints[f.name], default, docs.get(f.name, ""))


def _argument_kwargs(option: ConfigOption, ranged: bool) -> dict[str, Any]:
    """argparse keywords for `option`: bools as --flag/--no-flag, sequences as comma lists."""
    tp = _without_none(option.annotation)
    if tp is bool:
        return {"action": argparse.BooleanOptionalAction}
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        args = typing.get_args(tp)
        size = len(args) if origin is tuple and Ellipsis not in args else None
        return {"type": _comma_list(_without_none(args[0]), origin, size), "metavar": _LIST}
    if origin is typing.Literal:
        return {"choices": list(typing.get_args(tp))}
    if option.name in _CHOICES:
        module, name = _CHOICES[option.name]
        return {"choices": list(getattr(importlib.import_module(module), name))}
    parse = _RANGES[option.name] if ranged and option.name in _RANGES else tp
    if words := _literal_words(option.annotation):  # e.g. `float | Literal["auto"]`: --lr auto or --lr 1e-4
        return {"type": _word_or(parse, words), "metavar": f"{option.name.upper()}|{'|'.join(words)}"}
    return {"type": parse, "metavar": option.name.upper()}


def _literal_words(tp: Any) -> tuple[str, ...]:
    """The Literal values of a union annotation (`float | Literal["auto"]` -> ("auto",)); () for others."""
    if typing.get_origin(tp) not in (typing.Union, types.UnionType):
        return ()
    return tuple(w for a in typing.get_args(tp) if typing.get_origin(a) is typing.Literal for w in typing.get_args(a))


def _word_or(parse: Callable[[str], Any], words: Sequence[str]) -> Callable[[str], Any]:
    """argparse type: one of `words` as it is, else `parse(text)` (whose errors name the words too)."""
    def parse_word(text: str) -> Any:
        if text in words:
            return text
        try:
            return parse(text)
        except (ValueError, argparse.ArgumentTypeError) as e:
            raise argparse.ArgumentTypeError(f"{e} (or one of: {', '.join(words)})") from None

    return parse_word


def _without_none(tp: Any) -> Any:
    """`X | None` -> X; a union of several types -> its first (`str | int` positions are read as text)."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if typing.get_origin(tp) in (typing.Union, types.UnionType) else tp


def add_config_args(p: argparse.ArgumentParser, cls: type, required: Sequence[str] = (),
                    exclude: Sequence[str] = (), defaults: dict[str, Any] | None = None) -> None:
    """One option per (flattened) field of dataclass `cls`; `required` options have no default, `exclude`d
    fields (given by the handler) no option, and `defaults` replaces a field's default for this command."""
    ranged = not hasattr(cls, "validate")
    for option in config_options(cls):
        if option.name in exclude:
            continue
        kwargs = _argument_kwargs(option, ranged)
        if kwargs.get("metavar") == _LIST:
            p.epilog = "Lists are comma-separated; write --name=-1,0,1 when the first value is negative."
        action = p.add_argument(option.flag, dest=option.dest, required=option.name in required,
                                help=option.doc.replace("%", "%%"), **kwargs)
        # set after construction: BooleanOptionalAction would otherwise write the default into the help text
        action.default = None if option.name in required else (defaults or {}).get(option.name, option.default)


def config_from_args(cls: type[T], a: argparse.Namespace, **values: Any) -> T:
    """Dataclass `cls` from the options `add_config_args` added, nested configs rebuilt, `values` on top;
    checked with its `validate()` where it has one, so bad settings stop before any work."""
    def fields_of(tp: type, prefix: str) -> dict[str, Any]:
        hints = typing.get_type_hints(tp)
        out = {}
        for f in dataclasses.fields(tp):
            if dataclasses.is_dataclass(hints[f.name]):
                out[f.name] = hints[f.name](**fields_of(hints[f.name], f"{prefix}{f.name}."))
            elif hasattr(a, prefix + f.name):
                out[f.name] = getattr(a, prefix + f.name)
        return out

    cfg = cls(**{**fields_of(cls, ""), **values})
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


class _Formatter(argparse.HelpFormatter):
    """Help texts end with the option's default, a list written as it is typed (a,b,c)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        default = action.default
        if not action.option_strings or action.required or default is None or default is argparse.SUPPRESS:
            return action.help or ""
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{action.help or ''} (default: {shown.replace('%', '%%')})".lstrip()


# --- hand-written options: inputs that are not config fields, each written once ---

def _add_out(p: argparse.ArgumentParser, help_text: str, file: bool = False, required: bool = True) -> None:
    p.add_argument("--out", type=_out_file if file else _out_folder, required=required, help=help_text)


def _add_in(p: argparse.ArgumentParser, help_text: str = "JSONL with prompt/completion records") -> None:
    p.add_argument("--in", dest="input", required=True, help=help_text)


def _add_model(p: argparse.ArgumentParser, help_text: str = "model folder or name") -> None:
    p.add_argument("--model", required=True, help=help_text)


def _add_pair(p: argparse.ArgumentParser, base_help: str = "base model folder or name") -> None:
    p.add_argument("--base", required=True, help=base_help)
    p.add_argument("--post", required=True, help="post-trained model folder or name")


def _add_prompts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompts", required=True, help="JSONL with a prompt field per line")


def _add_sites(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sites", default="all", help="comma-separated site names, or all")


def _add_device(p: argparse.ArgumentParser, dtype: bool = False) -> None:
    p.add_argument("--device", default=None,
                   help="torch device: cpu, cuda, cuda:N, mps (default: cuda if available, else cpu)")
    if dtype:
        p.add_argument("--dtype", default=None, help="model dtype, e.g. bfloat16 (log-softmax is float32 regardless)")


def _add_chat_template(p: argparse.ArgumentParser) -> None:
    """--chat-template, for a command that loads its tokenizer itself (`rewardlab.config.PromptFormat`)."""
    from rewardlab.config import PromptFormat

    add_config_args(p, PromptFormat)


def _add_llm_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--llm-base-url", default=None, help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1")
    p.add_argument("--llm-model", default=None, help="model name at that endpoint")
    p.add_argument("--llm-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    p.add_argument("--hf-chat-model", default=None, help="local Hugging Face chat model (instead of an endpoint)")
    p.add_argument("--llm-cache", default=None, help="folder caching LLM calls (default: no cache)")


def _llm_backends(a: argparse.Namespace, check_endpoint: bool = False) -> tuple:
    from rewardlab.interp.score import make_backends

    return make_backends(a.llm_base_url, a.llm_model, a.llm_key_env, a.hf_chat_model, a.llm_cache,
                         check_endpoint=check_endpoint)


def _sites(model, text: str) -> list[str]:
    """--sites: all of `model`'s sites, or the comma-separated names."""
    from rewardlab.sites import all_sites

    return all_sites(model) if text == "all" else text.split(",")


# --- commands ---

@dataclasses.dataclass(frozen=True)
class Command:
    """A subcommand: its words (("diff", "kl")), one-line help, what adds its options, what runs it."""

    path: tuple[str, ...]
    help: str
    add_options: Callable[[argparse.ArgumentParser], None]
    run: Handler


# --- demo, run, report ---

def _demo(a: argparse.Namespace) -> None:
    from rewardlab.pipeline import demo_config, run_config_file, summary_table

    out = a.out or ("runs/demo-fast" if a.fast else "runs/demo")
    results = run_config_file(demo_config(a.fast), out, seed=a.seed)
    print(summary_table(results, out))


def _demo_options(p: argparse.ArgumentParser) -> None:
    _add_out(p, "output folder (default: runs/demo, or runs/demo-fast with --fast)", required=False)
    p.add_argument("--fast", action="store_true", help="the small CI preset (minutes, not tens of minutes)")
    p.add_argument("--seed", type=int, default=None, help="override the config's seed")


def _run(a: argparse.Namespace) -> None:
    from rewardlab.pipeline import run_config_file, summary_table

    print(summary_table(run_config_file(a.config, a.out), a.out))


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config (see src/rewardlab/configs/demo.yaml)")
    _add_out(p, "run folder; finished stages in it are reused")


def _report(a: argparse.Namespace) -> None:
    from rewardlab.report import build_report

    print(f"report -> {build_report(a.run)}")


def _report_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder (holds results.json)")


def _pipeline_commands() -> list[Command]:
    return [
        Command(("demo",), "the bundled review-world run: every stage, results.json and report.html",
                _demo_options, _demo),
        Command(("run",), "run the pipeline of a YAML config into a run folder (resumable)", _run_options, _run),
        Command(("report",), "write RUN/report.html from RUN/results.json and its artifacts (a pipeline run or "
                "an organisms folder)", _report_options, _report),
    ]


# --- world, reward ---

def _world_build(a: argparse.Namespace) -> None:
    from rewardlab.world import build_world, describe_world

    info = build_world(a.out, preset=a.preset, seed=a.seed)
    print(describe_world(info, a.out))


def _world_build_options(p: argparse.ArgumentParser) -> None:
    _add_out(p, "output folder")
    p.add_argument("--preset", default="tiny", choices=["micro", "tiny", "small"], help="size of the world's model")
    p.add_argument("--seed", type=int, default=0, help="seed of the corpus and the pretraining")


def _reward_score(a: argparse.Namespace) -> None:
    from rewardlab.io import read_jsonl, write_jsonl
    from rewardlab.rewards import get_reward, score_records

    records = read_jsonl(a.input, required=("prompt", "completion") if a.on == "full" else ("completion",))
    write_jsonl(a.out, score_records(records, get_reward(a.reward), on=a.on, field=a.field))
    print(f"scored {len(records)} records with {a.reward} -> {a.out}")


def _reward_score_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reward", required=True, help="utility | char:X | classifier:PATH[:LABEL] | rm:PATH | judge:URL_OR_PATH (see rewardlab.rewards)")
    _add_in(p)
    _add_out(p, "output JSONL", file=True)
    p.add_argument("--on", default="completion", choices=["completion", "full"],
                   help="score the completion only or prompt + completion")
    p.add_argument("--field", default="reward", help="name of the added field")


def _models_convert(a: argparse.Namespace) -> None:
    from rewardlab.convert import convert_gguf

    print(f"converted {a.gguf} -> {convert_gguf(a.gguf, a.out, dtype=a.dtype)}")


def _models_convert_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gguf", required=True, help="a .gguf file transformers can read (needs the gguf package)")
    _add_out(p, "new folder for the Hugging Face model and its tokenizer")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="dtype of the de-quantized weights")


def _dialogue_build(a: argparse.Namespace) -> None:
    from rewardlab.dialogue import build_dialogue, describe_dialogue

    info = build_dialogue(a.world, a.out, preset=a.preset, seed=a.seed)
    print(describe_dialogue(info, a.out))


def _dialogue_build_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--world", required=True, help="a built review world folder (rewardlab world build)")
    _add_out(p, "output folder")
    p.add_argument("--preset", default="tiny", choices=["micro", "tiny"], help="fine-tuning and measuring budget")
    p.add_argument("--seed", type=int, default=0, help="seed of the conversations, the new embeddings and the samples")


def _dialogue_run(a: argparse.Namespace) -> None:
    from rewardlab.stats import describe
    from rewardlab.stages.dialogue import Config, run_dialogue

    section = run_dialogue(config_from_args(Config, a), a.out)["dialogue"]
    for p in section["policies"]:
        print(f"  {p['name']:<12} bonus {'on ' if p['bonus'] else 'off'}  eliciting {describe(p['eliciting'])}  "
              f"KL {p['kl']['value']:.2f}")
    for v in section["verdicts"]:
        print(f"  bonus {'on ' if v['bonus'] else 'off'}: multi-turn steers the user: {v['steers']}")


def _dialogue_run_options(p: argparse.ArgumentParser) -> None:
    from rewardlab.stages.dialogue import Config

    _add_out(p, "benchmark folder; finished parts in it are reused")
    add_config_args(p, Config)


def _world_commands() -> list[Command]:
    return [
        Command(("world", "build"), "build the review world into a folder", _world_build_options, _world_build),
        Command(("dialogue", "build"), "two-turn conversations with a simulated user: fine-tune a world's base to "
                "play the assistant", _dialogue_build_options, _dialogue_build),
        Command(("dialogue", "run"), "does a multi-turn policy steer the user toward rewarded follow-ups? single- "
                "vs multi-turn PPO, bonus on and off (resumable)", _dialogue_run_options, _dialogue_run),
        Command(("models", "convert"), "convert a GGUF checkpoint into a Hugging Face model folder",
                _models_convert_options, _models_convert),
        Command(("reward", "score"), "add a reward field to each record of a JSONL file", _reward_score_options,
                _reward_score),
    ]


# --- diff, score, sample, audit ---

def _diff_params(a: argparse.Namespace) -> None:
    from rewardlab.diff.params import parameter_divergence, write_divergence
    from rewardlab.models import ModelPair, model_id
    from rewardlab.report.figures import save_png
    from rewardlab.stages.diffing import params_figure

    pair = ModelPair.load(a.base, a.post, device="cpu", dtype="float32")
    div = parameter_divergence(pair.base, pair.post)
    summary = write_divergence(div, a.out, model_id(a.base), model_id(a.post))
    save_png(params_figure(div.layers, f"{model_id(a.post)} vs {model_id(a.base)}"), Path(a.out) / "params.png")
    for row in summary["layers"][:10]:
        print(f"{row['rank']:>3} {row['group']:<28} norm sum {row['tensor_norm_sum']:.4g}  l2 {row['l2']:.4g}  "
              f"relative {row['relative_change']:.4g}")
    print(f"blocks that changed most: {', '.join(summary['top_blocks'])}; {summary['statement']} -> {a.out}/params.json")


def _diff_params_options(p: argparse.ArgumentParser) -> None:
    _add_pair(p)
    _add_out(p, "output folder")


def _diff_kl(a: argparse.Namespace) -> None:
    from rewardlab.diff.kl import KLConfig, token_kl
    from rewardlab.io import read_jsonl, write_json, write_jsonl
    from rewardlab.models import ModelPair, model_id
    from rewardlab.stats import describe

    records = read_jsonl(a.input, required=("prompt", "completion"))
    pair = ModelPair.load(a.base, a.post, device=a.device, dtype="float32", chat_template=a.chat_template)
    summary, rows = token_kl(pair.base, pair.post, pair.tokenizer, [r["prompt"] for r in records],
                             [r["completion"] for r in records], config_from_args(KLConfig, a))
    summary.update(base=model_id(a.base), post=model_id(a.post))
    write_json(f"{a.out}/kl.json", summary)
    write_jsonl(f"{a.out}/kl_tokens.jsonl", [{**r, **k} for r, k in zip(records, rows)])
    kl = summary["kl_per_token"]
    print(f"KL(post||base) per token {describe(kl, 4)}")
    print("promoted:", " ".join(t["token"] for t in summary["promoted"][:10]))
    print("demoted: ", " ".join(t["token"] for t in summary["demoted"][:10]))
    print(f"-> {a.out}/kl.json")


def _diff_kl_options(p: argparse.ArgumentParser) -> None:
    from rewardlab.diff.kl import KLConfig

    _add_pair(p)
    _add_in(p)
    _add_out(p, "output folder (kl.json, kl_tokens.jsonl)")
    add_config_args(p, KLConfig)
    _add_chat_template(p)
    _add_device(p)


def _score(a: argparse.Namespace) -> None:
    from rewardlab.diff.implicit import ScoreConfig, implicit_reward_records
    from rewardlab.io import read_jsonl, write_jsonl
    from rewardlab.models import ModelPair, pair_ids
    from rewardlab.rewards import get_reward

    records = read_jsonl(a.input, required=("prompt", "completion"))
    pair = ModelPair.load(a.base, a.post, device=a.device, dtype=a.dtype, chat_template=a.chat_template)
    base_name, post_name = pair_ids(a.base, a.post)
    rows = implicit_reward_records(pair.base, pair.post, pair.tokenizer, records, config_from_args(ScoreConfig, a),
                                   reward=get_reward(a.reward) if a.reward else None,
                                   rm=get_reward(f"rm:{a.rm}", device=a.device) if a.rm else None,
                                   base_name=base_name, post_name=post_name)
    write_jsonl(a.out, rows)
    print(f"scored {len(rows)} records: implicit reward of {post_name} against reference {base_name} -> {a.out}")


def _score_options(p: argparse.ArgumentParser) -> None:
    from rewardlab.diff.implicit import ScoreConfig

    _add_pair(p, base_help="reference model (for a DPO policy: its reference)")
    _add_in(p)
    _add_out(p, "output JSONL", file=True)
    add_config_args(p, ScoreConfig)
    _add_chat_template(p)
    p.add_argument("--reward", default=None, help="also score the true reward with this reward spec")
    p.add_argument("--rm", default=None, help="also score with this Hugging Face reward model folder")
    _add_device(p, dtype=True)


def _sample_divergent(a: argparse.Namespace) -> None:
    from rewardlab.diff.divergent import DivergentConfig, sample_divergent
    from rewardlab.io import read_jsonl, write_jsonl
    from rewardlab.models import ModelPair

    prompts = [r["prompt"] for r in read_jsonl(a.prompts, required=("prompt",))]
    cfg = config_from_args(DivergentConfig, a)
    pair = ModelPair.load(a.base, a.post, device=a.device, dtype=a.dtype, chat_template=a.chat_template)
    rows = sample_divergent(pair.base, pair.post, pair.tokenizer, prompts, cfg)
    write_jsonl(a.out, rows)
    for alpha in cfg.alphas:
        ir = [r["implicit_reward"] for r in rows if r["alpha"] == alpha]
        print(f"alpha {alpha:g}: {len(ir)} samples, mean implicit reward {sum(ir) / len(ir):.3f} nats")
    print(f"-> {a.out}")


def _sample_divergent_options(p: argparse.ArgumentParser) -> None:
    from rewardlab.diff.divergent import DivergentConfig

    _add_pair(p)
    _add_prompts(p)
    _add_out(p, "output JSONL, one line per sample", file=True)
    add_config_args(p, DivergentConfig)
    _add_chat_template(p)
    _add_device(p, dtype=True)


def _audit(a: argparse.Namespace) -> None:
    from rewardlab.audit import (PairConfig, audit, format_table, get_scorer, load_template, minimal_pairs,
                                 read_pairs, world_sources, world_words, write_audit)

    cfg = config_from_args(PairConfig, a)
    if a.pairs:
        pairs = read_pairs(a.pairs)
    elif a.template:
        pairs = load_template(a.template, cfg)
    else:
        pairs = minimal_pairs(world_sources(cfg.n_sources, cfg.seed, cfg.prompt_words), world_words(), cfg)
    scorer = get_scorer(a.rm, ref=a.ref, ref_free=a.ref_free, beta=a.beta, device=a.device,
                        chat_template=a.chat_template)
    results, rows = audit(scorer, pairs, seed=cfg.seed, cfg=cfg)
    write_audit(a.out, results, rows)
    print(format_table(results))
    print(f"-> {a.out}/results.json, {a.out}/scores.jsonl")


def _audit_options(p: argparse.ArgumentParser) -> None:
    from rewardlab.audit import PairConfig

    p.add_argument("--rm", required=True, help="reward spec (utility, rm:PATH, classifier:PATH, judge:URL_OR_PATH) or dpo:POLICY")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--pairs", default=None, help="JSONL with prompt/chosen/rejected (optional attribute)")
    source.add_argument("--template", default=None, help="template JSON (texts, word lists); default: review world")
    add_config_args(p, PairConfig)
    p.add_argument("--ref", default=None, help="reference model for dpo:POLICY")
    p.add_argument("--ref-free", default="sum", choices=["sum", "mean", "norm"],
                   help="score of dpo:POLICY without --ref: sum, mean, or -L2 norm of log-probs")
    p.add_argument("--beta", type=_positive, default=1.0, help="scale of dpo:POLICY's log-ratio")
    _add_chat_template(p)
    _add_out(p, "output folder (results.json, scores.jsonl)")
    _add_device(p)


def _diff_adl(a: argparse.Namespace) -> None:
    from rewardlab.io import read_jsonl, save_tensors, write_json
    from rewardlab.models import ModelPair, model_id
    from rewardlab.organisms.hypotheses import adl_summary
    from rewardlab.text import join_prompt_completion

    rows = read_jsonl(a.input)
    texts = [r["text"] if "text" in r else join_prompt_completion(r.get("prompt", ""), r.get("completion", ""))
             for r in rows]
    pair = ModelPair.load(a.base, a.post, device=a.device, dtype="float32")
    prompts = [r["prompt"] for r in read_jsonl(a.prompts, required=("prompt",))] if a.prompts else []
    summary, tensors = adl_summary(pair.base, pair.post, pair.tokenizer, texts, a.n_first, a.site, a.top_tokens,
                                   prompts, a.steer_alpha, seed=a.seed)
    summary.update(base=model_id(a.base), post=model_id(a.post))
    write_json(f"{a.out}/adl.json", summary)
    save_tensors(f"{a.out}/adl.safetensors", tensors)
    print(f"mean activation difference at {summary['site']} over the first {a.n_first} tokens of "
          f"{summary['n_texts']} texts, read through the logit lens")
    print("promoted:", " ".join(t["token"] for t in summary["promoted"][:10]))
    print("demoted: ", " ".join(t["token"] for t in summary["demoted"][:10]))
    for row in summary["steered"][:3]:
        print(f"  [{row['prompt']}] steered: {row['steered']}")
    print(f"-> {a.out}/adl.json")


def _diff_adl_options(p: argparse.ArgumentParser) -> None:
    _add_pair(p)
    _add_in(p, "JSONL with a `text` field (or prompt/completion records, joined)")
    _add_out(p, "output folder (adl.json, adl.safetensors)")
    p.add_argument("--site", default=None, help="site to read (default: the residual stream after the middle block)")
    p.add_argument("--n-first", type=_count, default=5, help="first tokens of each text averaged")
    p.add_argument("--top-tokens", type=_count, default=20, help="tokens listed as most promoted and demoted")
    p.add_argument("--prompts", default=None, help="JSONL with `prompt`: also sample the base model steered with the "
                   "difference from these")
    p.add_argument("--steer-alpha", type=_positive, default=0.5, help="steering strength in typical activation norms")
    p.add_argument("--seed", type=int, default=0, help="sampling seed of the steered and unsteered samples")
    _add_device(p)


def _organisms_run(a: argparse.Namespace) -> None:
    from rewardlab.stages.organisms import Config, run_organisms

    results = run_organisms(config_from_args(Config, a), a.out)["organisms"]
    for organism, methods in results["cells"].items():
        for method, cell in methods.items():
            scores = "  ".join(f"{k} {v['value']:.3f} [{v['ci'][0]:.3f}, {v['ci'][1]:.3f}]" for k, v in cell.items()
                               if isinstance(v, dict) and v.get("value") is not None)
            print(f"  {organism:<10} {method:<10} {scores}")
    for organism, cell in results.get("measures", {}).items():  # the sentiment world's earlier measurements
        shown = "  ".join(f"{k} {v['value']:.3f} [{v['ci'][0]:.3f}, {v['ci'][1]:.3f}]" for k, v in cell.items()
                          if isinstance(v, dict) and v.get("value") is not None)
        print(f"  {organism:<10} measures   {shown}")


def _organisms_run_options(p: argparse.ArgumentParser) -> None:
    from rewardlab.stages.organisms import Config

    _add_out(p, "benchmark folder; finished organisms in it are reused")
    add_config_args(p, Config)


def _diff_commands() -> list[Command]:
    return [
        Command(("diff", "params"), "parameter divergence per layer: ranked JSON, CSV and bar plot",
                _diff_params_options, _diff_params),
        Command(("diff", "kl"), "per-token KL(post || base) on completions; most changed tokens", _diff_kl_options,
                _diff_kl),
        Command(("diff", "adl"), "activation difference lens: mean post - base activation read through the unembedding",
                _diff_adl_options, _diff_adl),
        Command(("organisms", "run"), "model organisms with planted rewards: every diffing method scored against "
                "the truth (resumable)", _organisms_run_options, _organisms_run),
        Command(("score",), "implicit reward beta*sum log(pi_post/pi_base) of each completion", _score_options,
                _score),
        Command(("sample", "divergent"), "sample from post + alpha * (post - base) with a plausibility mask",
                _sample_divergent_options, _sample_divergent),
        Command(("audit",), "audit a reward model on minimal pairs (accuracy, ties lose)", _audit_options, _audit),
    ]


# --- train, data ---

def _print_summary(summary: dict) -> None:
    from rewardlab.io import dumps

    print(dumps({k: v for k, v in summary.items() if not k.endswith("_ci")}, indent=2))


def _train_ppo(a: argparse.Namespace) -> None:
    from rewardlab.rl.config import PPOConfig
    from rewardlab.rl.ppo import train_ppo

    _print_summary(train_ppo(config_from_args(PPOConfig, a), a.out))


def _train_ppo_options(p: argparse.ArgumentParser) -> None:
    from rewardlab.rl.config import PPOConfig

    _add_out(p, "output folder (resumes from its checkpoint)")
    add_config_args(p, PPOConfig, required=("base",))


def _train_dpo(a: argparse.Namespace) -> None:
    from rewardlab.rl.config import DPOTrainConfig
    from rewardlab.rl.dpo import train_dpo

    _print_summary(train_dpo(config_from_args(DPOTrainConfig, a), a.out))


def _train_dpo_options(p: argparse.ArgumentParser) -> None:
    from rewardlab.rl.config import DPOTrainConfig

    _add_out(p, "output folder")
    add_config_args(p, DPOTrainConfig, required=("base", "pairs"))


def _train_sweep(a: argparse.Namespace) -> None:
    from rewardlab.rl.config import PPOConfig
    from rewardlab.rl.sweep import sweep_kl
    from rewardlab.stages.sweep import save_frontier

    print(sweep_kl(config_from_args(PPOConfig, a), a.kl_coefs, a.out, a.parallel_runs, a.optimum_prompts,
                   a.optimum_samples))
    save_frontier(Path(a.out))


def _train_sweep_options(p: argparse.ArgumentParser) -> None:
    from rewardlab.rl.config import PPOConfig
    from rewardlab.stages.sweep import Config as SweepConfig

    _add_out(p, "output folder (one run per coefficient, plus frontier.*)")
    p.add_argument("--kl-coefs", required=True, type=_comma_list(float, tuple), metavar=_LIST,
                   help="KL coefficients, one PPO run each, e.g. 0,0.05,0.1,0.3")
    p.add_argument("--parallel-runs", type=int, default=SweepConfig.parallel_runs, metavar="N",
                   help="runs trained at once, each in its own process (the same numbers)")
    p.add_argument("--optimum-prompts", type=int, default=SweepConfig.optimum_prompts, metavar="N",
                   help="prompts of the reward's KL-optimal curve (the base tilted by exp(reward / beta)), "
                        "written to optimum.jsonl and drawn in frontier.png; 0: not drawn")
    p.add_argument("--optimum-samples", type=int, default=SweepConfig.optimum_samples, metavar="N",
                   help="base samples per prompt for that curve")
    add_config_args(p, PPOConfig, required=("base",), exclude=("kl_coef",))


def _data_pairs(a: argparse.Namespace) -> None:
    from rewardlab.rl.config import PairsConfig
    from rewardlab.rl.pairs import make_preference_pairs

    stats = make_preference_pairs(config_from_args(PairsConfig, a), a.out)
    print(f"wrote {stats['n_pairs']} pairs ({stats['n_ties']} ties dropped, mean margin "
          f"{stats['mean_margin']:.3f}) -> {a.out}")


def _data_pairs_options(p: argparse.ArgumentParser) -> None:
    from rewardlab.rl.config import PairsConfig

    _add_out(p, "output JSONL", file=True)
    add_config_args(p, PairsConfig, required=("model",))


def _train_commands() -> list[Command]:
    return [
        Command(("train", "ppo"), "PPO with a value head and KL control against the frozen base", _train_ppo_options,
                _train_ppo),
        Command(("train", "dpo"), "DPO (TRL) on preference pairs", _train_dpo_options, _train_dpo),
        Command(("train", "sweep"), "PPO at several KL coefficients: reward against exact KL", _train_sweep_options,
                _train_sweep),
        Command(("data", "pairs"), "sample, score and write prompt/chosen/rejected preference pairs",
                _data_pairs_options, _data_pairs),
    ]


# --- acts, probe, steer ---

def _acts_cache(a: argparse.Namespace) -> None:
    from rewardlab import distributed
    from rewardlab.acts import CacheConfig, cache_activations
    from rewardlab.io import read_jsonl
    from rewardlab.models import load_model

    model, tokenizer = load_model(a.model, device=a.device or distributed.device(), chat_template=a.chat_template)
    records = read_jsonl(a.input, required=("prompt", "completion"))
    cfg = config_from_args(CacheConfig, a, sites=_sites(model, a.sites))
    store = cache_activations(model, tokenizer, records, a.out, cfg, model_name=a.model)
    if distributed.rank_and_world()[0] == 0:
        print(f"cached {len(store)} records x {len(store.sites)} sites x {len(store.positions)} positions "
              f"({len(store.manifest['shards'])} shards) -> {a.out}")


def _acts_cache_options(p: argparse.ArgumentParser) -> None:
    from rewardlab.acts import CacheConfig

    _add_model(p)
    _add_in(p)
    _add_sites(p)
    add_config_args(p, CacheConfig, exclude=("sites",))
    _add_chat_template(p)
    _add_out(p, "output folder")
    _add_device(p)


def _probe_sweep(a: argparse.Namespace) -> None:
    from rewardlab.acts import CacheConfig, cache_activations
    from rewardlab.io import read_jsonl
    from rewardlab.models import load_model
    from rewardlab.probes.sweep import SweepConfig, sweep
    from rewardlab.stages.probes import save_heatmaps
    from rewardlab.stats import describe

    cfg = config_from_args(SweepConfig, a)
    records = read_jsonl(a.input, required=("prompt", "completion"), numbers=(cfg.target,))
    stores = {}
    for name, path in (("post", a.model), ("base", a.base)):
        if path is None:
            continue
        model, tokenizer = load_model(path, device=a.device, chat_template=a.chat_template)
        cache_cfg = config_from_args(CacheConfig, a, sites=_sites(model, a.sites))
        stores[name] = cache_activations(model, tokenizer, records, Path(a.out) / f"acts-{name}", cache_cfg, path)
    result = sweep(stores, cfg, a.out)
    save_heatmaps(result, Path(a.out))
    for name, r in result["models"].items():
        best, sp = r["best"], r["best"]["test"]["spearman"]
        print(f"{name}: best {best['site']} @ {best['position']}: test Spearman {describe(sp)}, "
              f"selectivity {describe(best['selectivity'])}")
    print(f"-> {a.out}/sweep.json, heatmaps, probe-*.safetensors")


def _probe_sweep_options(p: argparse.ArgumentParser) -> None:
    from rewardlab.acts import CacheConfig
    from rewardlab.stages.probes import Config as ProbesConfig
    from rewardlab.probes.sweep import SweepConfig

    _add_model(p, "post-trained model folder or name")
    p.add_argument("--base", default=None, help="base model, swept beside it on the same split")
    _add_in(p, "JSONL with prompt, completion and the target")
    _add_sites(p)
    add_config_args(p, SweepConfig)
    add_config_args(p, CacheConfig, exclude=("sites",), defaults={"positions": list(ProbesConfig.positions)})
    _add_chat_template(p)
    _add_out(p, "output folder")
    _add_device(p)


def _steer_direction(a: argparse.Namespace, model, tokenizer):
    """(direction, site, probe that defines it or None) for --direction."""
    from rewardlab.acts import collect_activations
    from rewardlab.io import read_jsonl
    from rewardlab.probes.cross import mean_difference_direction
    from rewardlab.probes.linear import load_probe
    from rewardlab.steer import reward_gradient_direction

    if a.direction not in ("mean-diff", "reward-gradient"):
        probe = load_probe(a.direction)
        return probe.direction(), a.site or probe.meta.get("site"), probe
    if not a.site or not a.records:
        raise InputError(f"--direction {a.direction} needs --site and --records (JSONL with a reward field)")
    records = read_jsonl(a.records, required=("prompt", "completion"), numbers=(a.target,))
    target = [r[a.target] for r in records]
    if a.direction == "mean-diff":
        x = collect_activations(model, tokenizer, records, [a.site], [a.position])[f"{a.site}|{a.position}"]
        return mean_difference_direction(x.numpy(), target), a.site, None
    return reward_gradient_direction(model, tokenizer, [r["prompt"] for r in records],
                                     [r["completion"] for r in records], target, a.site, a.where), a.site, None


def _steer(a: argparse.Namespace) -> None:
    from rewardlab.io import read_jsonl, write_json, write_jsonl
    from rewardlab.models import load_model
    from rewardlab.probes.linear import load_probe
    from rewardlab.rewards import get_reward
    from rewardlab.stages.probes import save_dose_response
    from rewardlab.stats import describe
    from rewardlab.steer import SteerConfig, dose_response
    from rewardlab.world import is_grammatical

    model, tokenizer = load_model(a.model, device=a.device, dtype="float32", chat_template=a.chat_template)
    direction, site, direction_probe = _steer_direction(a, model, tokenizer)
    probe = load_probe(a.probe) if a.probe else direction_probe
    checker = is_grammatical if a.grammar else None  # called as checker(completion, prompt)
    base = load_model(a.base, device=a.device, dtype="float32")[0] if a.base else None
    prompts = [r["prompt"] for r in read_jsonl(a.prompts, required=("prompt",))]
    neutral = [r["prompt"] for r in read_jsonl(a.neutral, required=("prompt",))] if a.neutral else None
    name = "probe" if direction_probe else a.direction
    result = dose_response(model, tokenizer, prompts, {name: direction}, config_from_args(SteerConfig, a, site=site),
                           get_reward(a.reward), probe=probe, base=base, checker=checker, neutral_prompts=neutral)
    write_jsonl(Path(a.out) / "steered.jsonl", result.pop("samples"))
    write_json(Path(a.out) / "steering.json", result)
    save_dose_response(result, Path(a.out) / "dose_response.png")
    steered = result["directions"][name]
    for row in steered["rows"]:
        print(f"alpha {row['alpha']:+.3g}: reward {describe(row['reward_mean'])}; {row['fluency_measure']} "
              f"{row['fluency']:.3f}{'' if row['fluent'] else ' (fluency lost)'}")
    s = steered["summary"]
    if s["alpha_up"] is None:
        print("no positive alpha keeps fluency: no effect over random reported")
    else:
        print(f"at alpha {s['alpha_up']:+.3g} (fluency {s['fluency_up']:.3f}): largest random |effect| "
              f"{s['random_max_abs_effect']:.3f}; effect / random {s['effect_over_random']:.2f}")
    print(f"-> {a.out}/steering.json, steered.jsonl, dose_response.png")


def _steer_options(p: argparse.ArgumentParser) -> None:
    from rewardlab.steer import SteerConfig

    _add_model(p)
    p.add_argument("--direction", required=True,
                   help="probe.safetensors, mean-diff (high minus low reward records), or reward-gradient (the "
                        "score-function gradient of the reward; --records must be the model's own samples); "
                        "the last two need --records and --site")
    p.add_argument("--site", default=None, help="site to steer (default: the probe's site)")
    _add_prompts(p)
    p.add_argument("--records", default=None, help="JSONL with prompt/completion/target for mean-diff, reward-gradient")
    p.add_argument("--target", default="reward", help="numeric record field of --records")
    p.add_argument("--position", default="last_completion", help="position of the mean-diff activations")
    p.add_argument("--probe", default=None, help="probe to score steered texts with")
    p.add_argument("--base", default=None, help="base model for the implicit reward")
    p.add_argument("--reward", default="utility", help="true reward spec (see reward score)")
    p.add_argument("--grammar", action="store_true", help="report the review world's grammatical rate")
    p.add_argument("--neutral", default=None, help="JSONL prompts for the next-token KL (default: --prompts)")
    add_config_args(p, SteerConfig, exclude=("site",))
    _add_chat_template(p)
    _add_out(p, "output folder (steering.json, dose_response.png)")
    _add_device(p)


def _acts_commands() -> list[Command]:
    return [
        Command(("acts", "cache"), "cache activations of prompt/completion records (sharded, resumable)",
                _acts_cache_options, _acts_cache),
        Command(("probe", "sweep"), "a probe per layer x site x position, for the model and its base",
                _probe_sweep_options, _probe_sweep),
        Command(("steer",), "steer generation along a direction; dose-response with random controls", _steer_options,
                _steer),
    ]


# --- sae, interp ---

_COMPARE_ONLY = ("n_layers", "layers", "site_kind", "architecture", "l1_coefficient", "tied", "expansions",
                 "shared_threshold", "n_top_features", "relevance_saes", "headline_expansion", "diffdict",
                 "diffdict_expansion")  # unused by crosscoder


def _sae_pair(a: argparse.Namespace):
    from rewardlab.io import read_jsonl
    from rewardlab.models import ModelPair

    pair = ModelPair.load(a.base, a.post, device=a.device, dtype="float32", chat_template=a.chat_template)
    return pair, read_jsonl(a.input, required=("prompt", "completion"))


def _sae_pair_options(p: argparse.ArgumentParser, exclude: Sequence[str] = ()) -> None:
    from rewardlab.sae.diffing import DiffConfig

    _add_pair(p)
    _add_in(p, "JSONL with prompt/completion (and reward) records")
    _add_out(p, "output folder")
    add_config_args(p, DiffConfig, exclude=exclude)
    _add_chat_template(p)
    _add_device(p)


def _sae_compare(a: argparse.Namespace) -> None:
    from rewardlab.sae.diffing import DiffConfig, compare_models
    from rewardlab.stats import describe

    cfg = config_from_args(DiffConfig, a)
    backends = _llm_backends(a, check_endpoint=True)
    pair, records = _sae_pair(a)
    res = compare_models(pair.base, pair.post, pair.tokenizer, records, a.out, cfg, *backends,
                         base_name=a.base, post_name=a.post)
    for L, layer in res["by_layer"].items():
        for name, m in layer["models"].items():
            print(f"layer {L} {name}: MMCS(1x,2x) {m['mmcs']['mmcs_max']:.3f} (one-to-one {m['mmcs']['mmcs_one_to_one']:.3f}),"
                  f" random {m['baseline_random']['mmcs_max']:.3f}, other seed {m['baseline_other_seed']['mmcs_max']:.3f};"
                  f" shared {m['mmcs']['n_shared']}; FVU 1x {m['metrics'][next(iter(m['metrics']))]['fvu']:.3f}")
        rel = layer["activation_relevance"]["post_minus_base"]
        print(f"layer {L} reward relevance post - base: {describe(rel)}")
        for name, c in layer["activation_relevance"].get("seed_control", {}).items():
            print(f"layer {L} seed control ({name}, SAE seed A - seed B): {describe(c)}")
    acc = res["headline"]
    for name, m in acc["sae"].items():
        print(f"headline SAE {name}: FVU {m['fvu']:.3f}, dead {m['dead_fraction']:.3f}, "
              f"CE recovered {m['ce_loss_recovered']:.3f}, L0 {m['l0']:.1f}")
    print(f"crosscoder: before {acc['crosscoder']['counts_before']}, after {acc['crosscoder']['counts_after']}")
    print(f"-> {a.out}/sae_compare.json, {a.out}/features.json")


def _sae_compare_options(p: argparse.ArgumentParser) -> None:
    _sae_pair_options(p)
    _add_llm_args(p)


def _sae_crosscoder(a: argparse.Namespace) -> None:
    from rewardlab.sae.diffing import DiffConfig, crosscoder_models

    cfg = config_from_args(DiffConfig, a)
    pair, records = _sae_pair(a)
    res = crosscoder_models(pair.base, pair.post, pair.tokenizer, records, a.out, a.site, cfg)
    print(f"crosscoder at {a.site}: before Latent Scaling {res['counts_before']}; after {res['counts_after']}")
    for latent in res["post_only"][:10]:
        tops = ", ".join(e["token"] for e in latent.get("top_examples", []))
        print(f"  post-only latent {latent['latent']} (r={latent['relative_norm']:.3f}, "
              f"false={latent['false_post_only']}): {tops}")
    print(f"-> {a.out}/crosscoder.json")


def _sae_crosscoder_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--site", required=True, help="site the crosscoder reads, e.g. blocks.2.hook_resid_post")
    _sae_pair_options(p, exclude=_COMPARE_ONLY)


def _sae_diffdict(a: argparse.Namespace) -> None:
    from rewardlab.sae.diffing import DiffConfig, diffdict_models
    from rewardlab.stats import describe

    cfg = config_from_args(DiffConfig, a)
    cfg.validate()
    backends = _llm_backends(a, check_endpoint=True)
    pair, records = _sae_pair(a)
    res = diffdict_models(pair.base, pair.post, pair.tokenizer, records, a.out, a.site, cfg, a.base, a.post, *backends)
    print(f"FVU of the post activations at {a.site} on {res['n_tokens']} held-out tokens ({res['n_groups']} prompts; "
          "identity, affine and diffdict read base only):")
    for name, est in res["fvu"].items():
        print(f"  {name:10s} {describe(est)}")
    for name, est in res["diffdict_minus"].items():
        print(f"  diffdict - {name}: {describe(est)}")
    for name, latents in res["latents"].items():
        for latent in latents[:3]:
            print(f"  {name} latent {latent['latent']} (importance {latent['importance']:.3f}): promotes "
                  f"{', '.join(latent['promoted'][:5])}; fires on {', '.join(e['token'] for e in latent['top_examples'])}"
                  f"; explained as {latent['explanation']!r}")
        if "simulation" in res["interp"][name]["summary"]:
            print(f"  {name} explanations, simulation score: {describe(res['interp'][name]['summary']['simulation'])}")
    print(f"-> {a.out}/diffdict.json, {a.out}/diffdict, {a.out}/diff_sae, {a.out}/crosscoder")


def _sae_diffdict_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--site", required=True, help="site the dictionaries read in both models, e.g. blocks.2.hook_resid_post")
    _sae_pair_options(p, exclude=tuple(f for f in _COMPARE_ONLY if f != "diffdict_expansion")
                      + ("crosscoder_expansion", "scaling_threshold"))
    _add_llm_args(p)


def _sae_train(a: argparse.Namespace) -> None:
    from rewardlab import distributed
    from rewardlab.io import read_jsonl
    from rewardlab.models import load_model
    from rewardlab.sae.diffing import train_site_sae
    from rewardlab.sae.model import SAEConfig
    from rewardlab.sae.train import TrainConfig

    train_cfg = config_from_args(TrainConfig, a)
    model, tokenizer = load_model(a.model, device=a.device or distributed.device(), dtype="float32",
                                  chat_template=a.chat_template)
    records = read_jsonl(a.input, required=("prompt", "completion"))
    d = model.config.hidden_size
    sae_cfg = config_from_args(SAEConfig, a, d_in=d, d_sae=a.expansion * d, hook_name=a.site)
    m = train_site_sae(model, tokenizer, records, a.site, a.out, sae_cfg, train_cfg)
    if distributed.rank_and_world()[0] != 0:
        return
    print(f"{sae_cfg.architecture} SAE {d}->{sae_cfg.d_sae} at {a.site}: FVU {m['fvu']:.3f}, L0 {m['l0']:.1f}, "
          f"dead {m['dead_fraction']:.3f}, dense {m['dense_fraction']:.3f}, CE recovered {m['ce_loss_recovered']:.3f}, "
          f"KL {m['kl_sae']:.4f} (zero ablation {m['kl_zero']:.3f}) -> {a.out}/sae, {a.out}/metrics.json")


def _sae_train_options(p: argparse.ArgumentParser) -> None:
    from rewardlab.sae.model import SAEConfig
    from rewardlab.sae.train import TrainConfig

    _add_model(p)
    _add_in(p)
    p.add_argument("--site", required=True, help="site the SAE reads, e.g. blocks.2.hook_resid_post")
    p.add_argument("--expansion", type=_count, default=4, help="dictionary width: d_sae = expansion x d_model")
    add_config_args(p, SAEConfig, exclude=("d_in", "d_sae", "hook_name"))
    add_config_args(p, TrainConfig)
    _add_chat_template(p)
    _add_out(p, "output folder (sae/, metrics.json)")
    _add_device(p)


def _interp(a: argparse.Namespace) -> None:
    from rewardlab.sae.diffing import interp_features_file

    res = interp_features_file(a.features, a.out, *_llm_backends(a), workers=a.workers)
    for entry in res["results"]:
        s = entry["summary"]
        sim, wrong = s.get("simulation", {}), s.get("wrong_simulation", {})
        print(f"{entry['model']} layer {entry['layer']}: {len(entry['features'])} features, simulation score "
              f"{sim.get('value', float('nan')):.3f}, wrong-feature {wrong.get('value', float('nan')):.3f}")
    print(f"-> {a.out}")


def _interp_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--features", required=True, help="features.json written by `rewardlab sae compare`")
    _add_out(p, "output JSON", file=True)
    p.add_argument("--workers", type=_count, default=8, help="concurrent LLM calls")
    _add_llm_args(p)


def _sae_commands() -> list[Command]:
    return [
        Command(("sae", "train"), "train one SAE on a model's completion tokens at a site", _sae_train_options,
                _sae_train),
        Command(("sae", "compare"), "the 2023 SAE paper's pipeline: layer ranking, 1x/2x dictionaries, MMCS, explanations",
                _sae_compare_options, _sae_compare),
        Command(("sae", "crosscoder"), "BatchTopK crosscoder over base+post activations, with Latent Scaling",
                _sae_crosscoder_options, _sae_crosscoder),
        Command(("sae", "diffdict"), "difference dictionary (encoder reads base, decoder predicts post) beside the "
                "difference SAE and a crosscoder: FVU of post activations", _sae_diffdict_options, _sae_diffdict),
        Command(("interp",), "explain and score SAE features (offline lexical, or an LLM)", _interp_options, _interp),
    ]


# --- value ---

def _load_models(a: argparse.Namespace) -> tuple[dict, object]:
    """({"post": --model, "base": --base if given}, the shared tokenizer)."""
    from rewardlab.models import ModelPair, load_model

    if a.base is None:
        model, tokenizer = load_model(a.model, device=a.device, dtype="float32", chat_template=a.chat_template)
        return {"post": model}, tokenizer
    pair = ModelPair.load(a.base, a.model, device=a.device, dtype="float32", chat_template=a.chat_template)
    return {"post": pair.post, "base": pair.base}, pair.tokenizer


def _value_targets(a: argparse.Namespace) -> None:
    import time

    import torch

    from rewardlab.io import read_jsonl, write_jsonl
    from rewardlab.rewards import get_reward
    from rewardlab.value.targets import TargetsConfig, compute_targets

    cfg = config_from_args(TargetsConfig, a)
    records = read_jsonl(a.input, required=("prompt", "completion"))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    reward = get_reward(cfg.reward)
    models, tokenizer = _load_models(a)
    start = time.perf_counter()
    rows = compute_targets(models, tokenizer, records, reward, cfg)
    write_jsonl(a.out, rows)
    for name in models:
        se = sum(r[f"value_se_{name}"] for r in rows) / len(rows)
        print(f"V_{name}: mean {sum(r[f'value_{name}'] for r in rows) / len(rows):.3f}, mean se {se:.3f}")
    print(f"{len(rows)} prefixes x {len(models)} models x {cfg.k} continuations in "
          f"{time.perf_counter() - start:.1f} s -> {a.out}")


def _value_targets_options(p: argparse.ArgumentParser) -> None:
    from rewardlab.value.targets import TargetsConfig

    _add_model(p, "model whose continuations define V (the post-trained model)")
    p.add_argument("--base", default=None, help="also estimate V under this base model, on the same prefixes")
    _add_in(p, "JSONL with prompt/completion records (the prefixes are cut from them)")
    _add_out(p, "output JSONL, one line per prefix", file=True)
    add_config_args(p, TargetsConfig)
    _add_device(p)


def _value_probe(a: argparse.Namespace) -> None:
    from rewardlab.io import read_jsonl, write_json
    from rewardlab.report.figures import save_png, value_probes
    from rewardlab.stats import describe
    from rewardlab.value.probes import ValueProbeConfig, collect_value_acts, value_head_predictions, value_probe_study
    from rewardlab.value.targets import check_rows

    cfg = config_from_args(ValueProbeConfig, a)
    records = read_jsonl(a.input, required=("prompt", "completion"))
    rows = read_jsonl(a.targets, required=("record", "position", "prefix_ids", "written", "realized"))
    models, tokenizer = _load_models(a)
    positions = check_rows(tokenizer, records, rows)
    head = None
    if a.value_head:
        from rewardlab.rl.value_head import load_value_head

        head = load_value_head(a.value_head)
    sites = list(dict.fromkeys(_sites(models["post"], a.sites) + ([head.site] if head else [])))
    acts = collect_value_acts(models, tokenizer, records, positions, sites)
    vh = value_head_predictions(head, acts["post"], positions) if head else None
    result = value_probe_study(acts, rows, records, cfg, value_head=vh)
    write_json(Path(a.out) / "value_probe.json", result)
    save_png(value_probes(result["table"]), Path(a.out) / "value_probe.png")
    for r in result["table"]:
        ev = describe(r["evidence"]) if r["evidence"] else "-"
        print(f"{r['acts']:>4} acts, {r['target']:<12} @ {r['position']:<11} {r['best_site']:<26} "
              f"Spearman {describe(r['spearman'])}; vs {r['strongest_baseline']}: {ev} ({r['verdict']})")
    print(f"-> {a.out}/value_probe.json, value_probe.png")


def _value_probe_options(p: argparse.ArgumentParser) -> None:
    from rewardlab.value.probes import ValueProbeConfig

    _add_model(p, "the model whose targets were estimated (the post-trained model)")
    p.add_argument("--base", default=None, help="base model: its activations give the cross matrix")
    _add_in(p, "the records JSONL the targets were cut from")
    p.add_argument("--targets", required=True, help="JSONL written by `rewardlab value targets`")
    _add_sites(p)
    p.add_argument("--value-head", default=None, help="PPO value_head.safetensors (or its folder) of --model")
    add_config_args(p, ValueProbeConfig)
    _add_chat_template(p)
    _add_out(p, "output folder (value_probe.json, value_probe.png)")
    _add_device(p)


def _value_run(a: argparse.Namespace) -> None:
    from rewardlab.value.probes import ValueProbeConfig
    from rewardlab.value.targets import TargetsConfig

    config_from_args(TargetsConfig, a), config_from_args(ValueProbeConfig, a)  # bad settings stop before any work
    out = Path(a.out)
    targets = str(out / "targets.jsonl")
    _value_targets(argparse.Namespace(**{**vars(a), "out": targets}))
    _value_probe(argparse.Namespace(**{**vars(a), "targets": targets}))


def _value_run_options(p: argparse.ArgumentParser) -> None:
    from rewardlab.value.probes import ValueProbeConfig
    from rewardlab.value.targets import TargetsConfig

    _add_model(p, "the post-trained model: V_post, and the activations probed")
    p.add_argument("--base", default=None, help="base model: V_base and the cross matrix")
    _add_in(p, "JSONL with prompt/completion records (the prefixes are cut from them)")
    _add_sites(p)
    p.add_argument("--value-head", default=None, help="PPO value_head.safetensors (or its folder) of --model")
    add_config_args(p, TargetsConfig)
    add_config_args(p, ValueProbeConfig, exclude=("seed",))  # --seed seeds the sampler, the split and the bootstrap
    _add_out(p, "output folder (targets.jsonl, value_probe.json, value_probe.png)")
    _add_device(p)


def _value_commands() -> list[Command]:
    return [
        Command(("value", "targets"), "Monte Carlo V(h), R(h) and F(h) = V - R for prefixes of records",
                _value_targets_options, _value_targets),
        Command(("value", "probe"), "probes of V and F on every site x position against text-only baselines",
                _value_probe_options, _value_probe),
        Command(("value", "run"), "value targets, then value probe, into one folder", _value_run_options, _value_run),
    ]


_GROUPS = {
    "models": "model folders: convert a GGUF checkpoint into a Hugging Face folder",
    "world": "the review world: a grammar, tokenizer and base model with a known reward",
    "reward": "score texts with a reward function",
    "diff": "what changed between a base and a post-trained model",
    "sample": "sample completions",
    "train": "post-train a model against a known reward (PPO, DPO, KL sweep)",
    "data": "make training data",
    "acts": "activation store: cache site activations to disk",
    "probe": "reward probes on activations",
    "sae": "sparse autoencoders and crosscoders for model diffing",
    "value": "does the model estimate its own expected reward? Monte Carlo values and value probes",
    "organisms": "model organisms: post-trained on rewards with a known truth, every method scored against it",
    "dialogue": "multi-turn: a simulated user whose follow-up depends on the model's review",
}


def commands() -> list[Command]:
    """Every subcommand, in the order `rewardlab --help` lists them."""
    return [*_pipeline_commands(), *_world_commands(), *_diff_commands(), *_train_commands(), *_acts_commands(),
            *_sae_commands(), *_value_commands()]


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The `rewardlab` parser. Given `argv`, only the subcommand it names gets its options, so the others'
    config modules (some import torch) stay unimported; without, every subcommand gets them."""
    parser = argparse.ArgumentParser(
        prog="rewardlab",
        description="Reward interpretability: what did post-training teach a language model about reward?",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    top = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for command in commands():
        *group, name = command.path
        if group and group[0] not in groups:
            groups[group[0]] = top.add_parser(group[0], help=_GROUPS[group[0]]).add_subparsers(
                dest=f"{group[0]}_command", required=True, metavar="ACTION")
        p = (groups[group[0]] if group else top).add_parser(name, help=command.help, formatter_class=_Formatter)
        p.set_defaults(func=command.run)
        if argv is None or tuple(argv[:len(command.path)]) == command.path:
            command.add_options(p)
    return parser


def _version() -> str:
    from rewardlab import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    try:
        args.func(args)
    except InputError as e:
        command = " ".join(a for a in argv[:2] if not a.startswith("-"))
        hint = "" if e.fix else f"\n  fix: change that setting; `rewardlab {command} --help` lists each one"
        print(f"rewardlab: error: {e}{hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rewardlab: interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # the file system refused: read-only, full, permission, a name too long
        where = f"{e.filename}: " if e.filename else ""
        print(f"rewardlab: error: {where}{e.strerror or e}\n  fix: check that the path exists and is writable, "
              "and that its disk has space", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
