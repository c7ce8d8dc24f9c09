"""Does the model estimate its own expected reward? Value targets and value probes.

    targets   Monte Carlo V_M(h) (expected true reward of a prefix under model M, K sampled
              continuations), the realized part R(h) and the expected future part F_M(h) = V - R
    probes    ridge probes of V and F on every site x position class against text-only baselines,
              the cross matrix {base, post activations} x {V_base, V_post}, and the value head beside them
"""
