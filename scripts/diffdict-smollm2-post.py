"""Make the "post" model of the difference dictionary's real-model measurement (docs/FINDINGS.md): SmolLM2-
135M-Instruct after a short supervised fine-tune on a review-world policy's completions (next-token loss on
prompt + completion text, no chat template; Adam, fixed seed, CPU).

    python scripts/diffdict-smollm2-post.py MODEL RECORDS.jsonl OUT [--steps 40] [--lr 5e-5] [--batch 8]

RECORDS: prompt/completion JSONL (e.g. a demo run's probes/records.jsonl; rows with source "policy" are used).
"""

import argparse
import json

import torch

from rewardlab.models import load_model, load_tokenizer


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("records")
    p.add_argument("out")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.manual_seed(a.seed)
    model, tok = load_model(a.model, device="cpu", dtype="float32", chat_template="off")
    rows = [json.loads(line) for line in open(a.records)]
    texts = [f"{r['prompt']} {r['completion']}" for r in rows if r.get("source", "policy") == "policy"]
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    gen = torch.Generator().manual_seed(a.seed)
    model.train()
    for step in range(a.steps):
        batch = [texts[i] for i in torch.randint(0, len(texts), (a.batch,), generator=gen).tolist()]
        enc = tok(batch, return_tensors="pt", padding=True)
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        loss = model(**enc, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        print(f"step {step} loss {loss.item():.3f}", flush=True)
    model.eval()
    model.save_pretrained(a.out)
    load_tokenizer(a.model).save_pretrained(a.out)  # unchanged, with its chat template


if __name__ == "__main__":
    main()
