"""Write review-style chat prompts for a pretrained instruct model: each asks to continue a review opener of
the review world's grammar (`sample_openers`), so the utility reward's lexicon words are natural answers.

    python scripts/review-chat-prompts.py OUT.jsonl --n 64 --seed 0 [--exclude OTHER.jsonl]

One {"prompt": ...} per line; openers are distinct and, with --exclude, disjoint from another file's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rewardlab.world.grammar import sample_openers

TEMPLATE = 'Continue this movie review with one or two sentences: "{opener}"'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--n", type=int, default=64, help="number of prompts")
    parser.add_argument("--seed", type=int, default=0, help="seed of the opener draw")
    parser.add_argument("--exclude", type=Path, help="a prompts file whose openers are left out")
    args = parser.parse_args()
    excluded = set()
    if args.exclude:
        excluded = {json.loads(line)["opener"] for line in args.exclude.read_text().splitlines() if line.strip()}
    openers = sample_openers(args.n, args.seed, exclude=excluded)
    args.out.write_text("".join(json.dumps({"prompt": TEMPLATE.format(opener=o), "opener": o}) + "\n"
                                for o in openers))


if __name__ == "__main__":
    main()
