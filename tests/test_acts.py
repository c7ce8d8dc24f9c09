"""Activation store: positions with padding, exclusion of special tokens, sharding, resume, streaming."""

from __future__ import annotations

import pytest
import torch

from rewardlab.acts import ActivationStore, CacheConfig, cache_activations
from rewardlab.errors import InputError
from rewardlab.sites import run_with_capture

SITES = ["blocks.0.hook_resid_post", "blocks.1.hook_mlp_out"]
RECORDS = [
    {"prompt": "the movie", "completion": "was good .", "reward": 1.0, "source": "a"},
    {"prompt": "the plot", "completion": "was bad", "reward": -1.0},
    {"prompt": "the movie", "completion": "was great and good . <eos>", "reward": 2.0},
    {"prompt": "acting", "completion": "", "reward": 0.0},
    {"prompt": "the acting was", "completion": "bad but good", "reward": 0.5},
]


def _single(model, tok, prompt, completion):
    """Activations of one unpadded sequence: {site: [seq, d]}, and the prompt length."""
    p = tok(prompt)["input_ids"]
    c = tok(completion, add_special_tokens=False)["input_ids"]
    acts = run_with_capture(model, torch.tensor([p + c]), None, SITES)
    return {k: v[0] for k, v in acts.items()}, len(p), p + c


@pytest.fixture
def setup(tiny_model, word_tokenizer):
    return tiny_model("gpt2"), word_tokenizer()


def test_positions_match_unpadded_forward(setup, tmp_path):
    model, tok = setup
    cfg = CacheConfig(sites=SITES, positions=["last_completion", "last_prompt", "mean_completion", 0, -2, "tokens"],
                      batch_size=3, shard_rows=2)
    store = cache_activations(model, tok, RECORDS, tmp_path / "c", cfg, model_name="tiny")
    assert len(store.manifest["shards"]) == 3
    for site in SITES:
        loaded = {p: store.load(site, p) for p in ["last_completion", "last_prompt", "mean_completion", 0, -2]}
        tokens = store.load(site, "tokens")
        offset = 0
        for i, r in enumerate(RECORDS):
            act, plen, ids = _single(model, tok, r["prompt"], r["completion"])
            act = act[site]
            real = [j for j in range(plen, len(ids)) if ids[j] != tok.eos_token_id]  # <eos> is excluded
            last_prompt = act[plen - 1]
            torch.testing.assert_close(loaded["last_prompt"][i], last_prompt)
            if not real:  # empty completion falls back to the last prompt token
                torch.testing.assert_close(loaded["last_completion"][i], last_prompt)
                continue
            torch.testing.assert_close(loaded["last_completion"][i], act[real[-1]])
            torch.testing.assert_close(loaded["mean_completion"][i], act[real].mean(0), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(loaded[0][i], act[real[0]])
            torch.testing.assert_close(loaded[-2][i], act[real[max(-len(real), -2)]])
            torch.testing.assert_close(tokens[offset:offset + len(real)], act[real])
            offset += len(real)
        assert offset == len(tokens)
    assert store.rows[2]["n_completion_tokens"] == 5  # "<eos>" not counted
    assert store.rows[0]["prompt_id"] == store.rows[2]["prompt_id"] != store.rows[1]["prompt_id"]
    assert list(store.field("reward")) == [1.0, -1.0, 2.0, 0.0, 0.5]
    assert "source" not in store.rows[0]  # only numeric fields are kept


def test_iter_batches_streams_all_tokens(setup, tmp_path):
    model, tok = setup
    cfg = CacheConfig(sites=SITES[:1], positions=["tokens"], shard_rows=2)
    store = cache_activations(model, tok, RECORDS, tmp_path / "c", cfg)
    full = store.load(SITES[0], "tokens")
    batches = list(store.iter_batches(SITES[0], batch_size=4))
    assert [len(b["acts"]) for b in batches] == [4, 4, 4, len(full) - 12]
    torch.testing.assert_close(torch.cat([b["acts"] for b in batches]), full)
    row_ids = torch.cat([b["row_ids"] for b in batches]).tolist()
    assert row_ids == sorted(row_ids) and set(row_ids) == {0, 1, 2, 4}
    token_ids = torch.cat([b["token_ids"] for b in batches]).tolist()
    assert token_ids[:3] == tok("was good .", add_special_tokens=False)["input_ids"]


def test_resume_skips_finished_shards(setup, tmp_path, monkeypatch):
    model, tok = setup
    cfg = CacheConfig(sites=SITES, positions=["last_completion"], shard_rows=2, batch_size=2)
    out = tmp_path / "c"
    import rewardlab.acts as acts_mod

    calls = {"n": 0}
    real = acts_mod.run_with_capture

    def failing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:  # the third batch = the third shard dies
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(acts_mod, "run_with_capture", failing)
    with pytest.raises(KeyboardInterrupt):
        cache_activations(model, tok, RECORDS, out, cfg)
    with pytest.raises(InputError, match="incomplete"):
        ActivationStore(out)
    assert (out / "shard-00001.safetensors").is_file() and not (out / "shard-00002.safetensors").exists()
    calls["n"] = -100
    store = cache_activations(model, tok, RECORDS, out, cfg)
    assert calls["n"] == -100 + 1  # only shard 2 (one batch) ran again
    fresh = cache_activations(model, tok, RECORDS, tmp_path / "fresh", cfg)
    torch.testing.assert_close(store.load(SITES[1]), fresh.load(SITES[1]))
    with pytest.raises(InputError, match="other inputs"):
        cache_activations(model, tok, RECORDS[:3], out, cfg)


def test_bad_inputs(setup, tmp_path):
    model, tok = setup
    with pytest.raises(InputError, match="layer 7"):
        cache_activations(model, tok, RECORDS, tmp_path / "c", CacheConfig(sites=["blocks.7.hook_resid_post"]))
    with pytest.raises(InputError, match="position"):
        CacheConfig(sites=SITES, positions=["middle"]) and cache_activations(
            model, tok, RECORDS, tmp_path / "c", CacheConfig(sites=SITES, positions=["middle"]))
    longest = max(len(tok(r["completion"], add_special_tokens=False)["input_ids"]) for r in RECORDS)
    with pytest.raises(InputError, match=f"position {longest} is past every completion"):
        cache_activations(model, tok, RECORDS, tmp_path / "c", CacheConfig(sites=SITES, positions=[longest]))
    assert not (tmp_path / "c").exists()
    store = cache_activations(model, tok, RECORDS, tmp_path / "d", CacheConfig(sites=SITES[:1]))
    with pytest.raises(InputError, match="not in this cache"):
        store.load(SITES[1])
    with pytest.raises(InputError, match="missing"):
        store.field("score")


def test_collect_in_memory_equals_store(setup, tmp_path):
    from rewardlab.acts import collect_activations

    model, tok = setup
    store = cache_activations(model, tok, RECORDS, tmp_path / "c",
                              CacheConfig(sites=SITES, positions=["last_prompt", "tokens"], batch_size=2))
    mem = collect_activations(model, tok, RECORDS, SITES, ["last_prompt", "tokens"], batch_size=5)
    for site in SITES:
        torch.testing.assert_close(mem[f"{site}|last_prompt"], store.load(site, "last_prompt"))
        torch.testing.assert_close(mem[f"{site}|tokens"], store.load(site, "tokens"))


def test_shard_written_while_next_is_computed(setup, tmp_path, monkeypatch):
    """The write of shard k waits (up to 30 s) for shard k + 1's forward (one batch a shard here): it goes on at
    once when the writes run beside the computation, and would time out if the write blocked the forwards."""
    import threading

    import rewardlab.acts as acts_mod

    model, tok = setup
    forwards, written = [], []
    forward_started = threading.Condition()
    real_forward, real_save = acts_mod.run_with_capture, acts_mod.save_tensors

    def forward(*a, **k):
        with forward_started:
            forwards.append(threading.current_thread().name)
            forward_started.notify_all()
        return real_forward(*a, **k)

    def save(path, tensors, metadata=None):
        shard = int(path.name[len("shard-"):-len(".safetensors")])
        with forward_started:  # shard k's write saw shard k + 1's forward start (the last shard has none)
            overlapped = forward_started.wait_for(lambda: len(forwards) >= shard + 2, timeout=30) if shard < 2 else None
        written.append((shard, overlapped, threading.current_thread().name))
        real_save(path, tensors, metadata)

    monkeypatch.setattr(acts_mod, "run_with_capture", forward)
    monkeypatch.setattr(acts_mod, "save_tensors", save)
    cfg = CacheConfig(sites=SITES, positions=["last_prompt", "tokens"], shard_rows=2, batch_size=2)
    store = cache_activations(model, tok, RECORDS, tmp_path / "c", cfg)
    assert [(shard, overlapped) for shard, overlapped, _ in written] == [(0, True), (1, True), (2, None)]
    assert set(forwards) == {threading.main_thread().name} != {thread for _, _, thread in written}
    monkeypatch.setattr(acts_mod, "run_with_capture", real_forward)
    monkeypatch.setattr(acts_mod, "save_tensors", real_save)
    fresh = cache_activations(model, tok, RECORDS, tmp_path / "fresh", cfg)
    for site in SITES:
        for position in ("last_prompt", "tokens"):
            assert torch.equal(store.load(site, position), fresh.load(site, position))


def test_failed_shard_write_raises_and_leaves_cache_incomplete(setup, tmp_path, monkeypatch):
    import rewardlab.acts as acts_mod

    model, tok = setup
    real_save = acts_mod.save_tensors

    def save(path, tensors, metadata=None):
        if path.name == "shard-00001.safetensors":
            raise OSError("No space left on device")
        real_save(path, tensors, metadata)

    monkeypatch.setattr(acts_mod, "save_tensors", save)
    cfg = CacheConfig(sites=SITES, positions=["last_completion"], shard_rows=2, batch_size=2)
    with pytest.raises(OSError, match="No space left"):
        cache_activations(model, tok, RECORDS, tmp_path / "c", cfg)
    with pytest.raises(InputError, match="incomplete"):
        ActivationStore(tmp_path / "c")
    assert (tmp_path / "c" / "shard-00000.safetensors").is_file()
    assert not (tmp_path / "c" / "shard-00002.safetensors").exists()  # the run stopped at the failed write
