"""The `rewardlab` command. It only parses arguments and delegates; the work lives in the modules.

Every handler imports its module lazily so `rewardlab --help` stays fast. Bad input raises
`InputError`, printed here as one message with exit code 2.
"""

from __future__ import annotations

import argparse
import sys

from rewardlab.errors import InputError


def _world_build(a: argparse.Namespace) -> None:
    from rewardlab.world import build_world, describe_world

    info = build_world(a.out, preset=a.preset, seed=a.seed)
    print(describe_world(info, a.out))


def _reward_score(a: argparse.Namespace) -> None:
    from rewardlab.io import read_jsonl, write_jsonl
    from rewardlab.rewards import get_reward, score_records

    records = read_jsonl(a.input, required=("prompt", "completion") if a.on == "full" else ("completion",))
    write_jsonl(a.out, score_records(records, get_reward(a.reward), on=a.on, field=a.field))
    print(f"scored {len(records)} records with {a.reward} -> {a.out}")


def _demo(a: argparse.Namespace) -> None:
    from rewardlab.world import build_world, describe_world

    out = a.out or "runs/demo"
    info = build_world(f"{out}/world", preset="micro" if a.fast else "tiny", seed=a.seed)
    print(describe_world(info, f"{out}/world"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rewardlab",
        description="Reward interpretability: what did post-training teach a language model about reward?",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # --- demo ---
    p = commands.add_parser("demo", help="build the review world and run the bundled demo on it")
    p.add_argument("--out", default=None, help="output folder (default: runs/demo)")
    p.add_argument("--fast", action="store_true", help="the small CI preset (minutes, not tens of minutes)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_demo)

    # --- world ---
    world = commands.add_parser("world", help="the review world: a grammar, tokenizer and base model with a known reward")
    world_cmds = world.add_subparsers(dest="world_command", required=True, metavar="ACTION")
    p = world_cmds.add_parser("build", help="build the review world into a folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--preset", default="tiny", choices=["micro", "tiny", "small"])
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_world_build)

    # --- reward ---
    reward = commands.add_parser("reward", help="score texts with a reward function")
    reward_cmds = reward.add_subparsers(dest="reward_command", required=True, metavar="ACTION")
    p = reward_cmds.add_parser("score", help="add a reward field to each record of a JSONL file")
    p.add_argument("--reward", required=True, help="utility | char:X | classifier:PATH[:LABEL] | rm:PATH")
    p.add_argument("--in", dest="input", required=True, help="JSONL with prompt/completion records")
    p.add_argument("--out", required=True, help="output JSONL")
    p.add_argument("--on", default="completion", choices=["completion", "full"],
                   help="score the completion only (default) or prompt + completion")
    p.add_argument("--field", default="reward", help="name of the added field")
    p.set_defaults(func=_reward_score)

    return parser


def _version() -> str:
    from rewardlab import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except InputError as e:
        print(f"rewardlab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rewardlab: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
