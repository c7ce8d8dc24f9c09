"""rewardlab: find out what post-training taught a language model about reward."""

__version__ = "0.1.0"
