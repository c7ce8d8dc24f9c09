"""The dialogue world: two-turn conversations in the review grammar with a known, seeded simulated
user whose follow-up depends on what the model's review said; per-turn rewards with a planted
follow-up bonus; PPO over whole conversations with the user's tokens masked out."""

from rewardlab.dialogue.build import Dialogue, build_dialogue, describe_dialogue, load_dialogue
from rewardlab.dialogue.user import UserPolicy, followup_distribution

__all__ = ["Dialogue", "UserPolicy", "build_dialogue", "describe_dialogue", "followup_distribution",
           "load_dialogue"]
