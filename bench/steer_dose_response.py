"""CPU seconds of the probes stage's steering dose-response on a finished demo run's models (3 directions, 8 random
controls, the stage's 7 alphas, 4 samples per held-out prompt, 1 thread) and a hash of the whole result.

    PYTHONPATH=src python bench/steer_dose_response.py RUN N_PROMPTS OUT.json

RUN: a finished `rewardlab demo` folder (world, ppo, probes). The directions are seeded random vectors (the
cost does not depend on them). Run it with the library before and after a change: equal hashes mean equal
samples and figures."""
import hashlib, json, sys, time, torch
from rewardlab.models import load_model
from rewardlab.probes.linear import load_probe
from rewardlab.rewards import get_reward
from rewardlab.steer import SteerConfig, dose_response
from rewardlab.world import is_grammatical
torch.set_num_threads(1)
RUN, n_prompts, OUT = sys.argv[1], int(sys.argv[2]), sys.argv[3]
policy, tok = load_model(RUN + "/ppo/policy", dtype="float32")
base, _ = load_model(RUN + "/world/base", dtype="float32")
probe = load_probe(RUN + "/probes/sweep/probe-policy.safetensors")
site = "blocks.3.hook_resid_post"
held = [json.loads(l)["prompt"] for l in open(RUN + "/world/prompts_heldout.jsonl")][:n_prompts]
prompts = [p for p in held for _ in range(4)]
g = torch.Generator().manual_seed(5)
dirs = {n: torch.randn(128, generator=g).numpy() for n in ("mean_diff", "reward_gradient", "probe")}
cfg = SteerConfig(site=site, alphas=(-0.1, -0.05, 0.0, 0.025, 0.05, 0.075, 0.1), where="completion", n_random=8,
                  max_new_tokens=32, batch_size=64, seed=0, n_boot=1000)
t = time.process_time()
res = dose_response(policy, tok, prompts, dirs, cfg, get_reward("utility"), probe=probe, base=base,
                    checker=is_grammatical, progress=False)
cpu = time.process_time() - t
res["config"].pop("max_rows", None)
text = json.dumps(res, sort_keys=True, default=str)
print(f"prompts {len(prompts)}: dose_response CPU {cpu:.1f} s, result sha {hashlib.sha256(text.encode()).hexdigest()[:16]}")
json.dump(res, open(OUT, "w"), default=str)
