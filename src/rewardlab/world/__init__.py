"""The review world: a seeded grammar of movie reviews with a known reward (VADER utility), a
word-level tokenizer and a GPT-2-style base model pretrained on the grammar's corpus."""

from rewardlab.world.build import World, build_world, describe_world, load_world, world_of_model
from rewardlab.world.grammar import grammatical_rate, is_grammatical
from rewardlab.world.pretrain import PRESETS, WorldConfig

__all__ = ["PRESETS", "World", "WorldConfig", "build_world", "describe_world", "grammatical_rate",
           "is_grammatical", "load_world", "world_of_model"]
