"""Diffing a base and a post-trained model: what did post-training change?

    logprobs    completion-token log-probs (the one implementation the others share)
    implicit    implicit reward beta * sum log(pi_post / pi_base), scoring files
    params      parameter divergence per layer
    kl          per-token KL(post || base) and the most promoted / demoted tokens
    divergent   sampling from post + alpha * (post - base) with a plausibility mask
"""
