"""Post-training against a known reward: PPO with a value head and KL control, preference pairs, DPO.

    from rewardlab.rl import PPOConfig, train_ppo
    summary = train_ppo(PPOConfig(base="world/base", reward="utility"), "runs/ppo")
"""

from rewardlab.rl.config import DPOTrainConfig, PairsConfig, PPOConfig

__all__ = ["PPOConfig", "DPOTrainConfig", "PairsConfig", "train_ppo", "train_dpo", "make_preference_pairs"]


def __getattr__(name):  # the trainers load torch/transformers/trl only when asked for
    if name == "train_ppo":
        from rewardlab.rl.ppo import train_ppo
        return train_ppo
    if name == "train_dpo":
        from rewardlab.rl.dpo import train_dpo
        return train_dpo
    if name == "make_preference_pairs":
        from rewardlab.rl.pairs import make_preference_pairs
        return make_preference_pairs
    raise AttributeError(name)
