"""Automatic feature explanations: activation records, explainers, simulators, scorers, LLM clients."""
