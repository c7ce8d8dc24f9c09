"""SAE architectures, training, metrics and SAELens export on synthetic sparse data."""

import pytest
import torch


pytestmark = pytest.mark.usefixtures("one_thread")

from rewardlab.sae.compare import compare_dictionaries, random_baseline
from rewardlab.sae.export import load_sae, save_sae
from rewardlab.sae.metrics import reconstruction_metrics
from rewardlab.sae.model import (Pairs, SAEConfig, SparseAutoencoder, SparseCodes, batch_top_indices, indices_at_least,
                                  nth_largest, stable_argsort)
from rewardlab.sae import train as train_module
from rewardlab.sae.crosscoder import Crosscoder
from rewardlab.sae.train import SAEJob, TrainConfig, _aux_k_loss, train_sae, train_saes


def sparse_data(n=20_000, d=32, n_true=64, active=3, seed=0):
    """Tokens that are sums of `active` random unit features (of n_true) with random magnitudes."""
    gen = torch.Generator().manual_seed(seed)
    true = torch.randn(n_true, d, generator=gen)
    true = true / true.norm(dim=1, keepdim=True)
    idx = torch.rand(n, n_true, generator=gen).topk(active, dim=1).indices
    codes = torch.zeros(n, n_true).scatter_(1, idx, 1 + 4 * torch.rand(n, active, generator=gen))
    return codes @ true + 3.0, true  # an offset, so b_dec matters


@pytest.fixture(scope="module")
def data():
    return sparse_data()


@pytest.mark.parametrize("arch", ["batchtopk", "topk", "relu"])
def test_sae_recovers_sparse_features(data, arch):
    acts, true = data
    cfg = SAEConfig(d_in=32, d_sae=128, architecture=arch, k=3, l1_coefficient=3e-3)
    res = train_sae(acts[:16_000], cfg, TrainConfig(batch_size=256, n_tokens=300_000, dead_window=20_000))
    m = reconstruction_metrics(res.sae, acts[16_000:])
    assert m["fvu"] < 0.1, m
    if arch != "relu":
        assert abs(m["l0"] - 3) < 1.0, m
    # decoder rows stay unit norm
    assert torch.allclose(res.sae.W_dec.norm(dim=1), torch.ones(128), atol=1e-5)
    # the true features are found: each has a close SAE decoder row
    assert compare_dictionaries(true, res.sae.W_dec)["mmcs_max"] > 0.9


def test_training_is_deterministic(data):
    acts, _ = data
    cfg = SAEConfig(d_in=32, d_sae=64, k=3)
    tc = TrainConfig(batch_size=256, n_tokens=20_000, seed=3)
    a, b = train_sae(acts, cfg, tc).sae, train_sae(acts, cfg, tc).sae
    assert torch.equal(a.W_dec, b.W_dec) and torch.equal(a.threshold, b.threshold)
    c = train_sae(acts, cfg, TrainConfig(batch_size=256, n_tokens=20_000, seed=4)).sae
    assert not torch.equal(a.W_dec, c.W_dec)


@pytest.mark.parametrize("parallel_mib", [1024, 0])
def test_training_several_at_once_gives_each_the_sae_it_gets_alone(data, monkeypatch, parallel_mib):
    """train_saes (two worker threads taking the longest jobs first, or one after another when its memory budget
    fits one) returns every job's result under its key, each bit for bit the SAE train_sae trains alone, and leaves
    the thread count as it was."""
    monkeypatch.setattr(train_module, "PARALLEL_MIB", parallel_mib)
    acts, _ = data
    tc = TrainConfig(batch_size=256, n_tokens=20_000)
    jobs = {"small": SAEJob(acts, SAEConfig(d_in=32, d_sae=64, k=3), tc),
            ("wide", 5): SAEJob(acts, SAEConfig(d_in=32, d_sae=128, k=3), TrainConfig(batch_size=256, n_tokens=30_000,
                                                                                       seed=5)),
            "targets": SAEJob(acts, SAEConfig(d_in=32, d_sae=64, k=3), tc, targets=acts.flip(1)),
            "crosscoder": SAEJob(torch.cat([acts, acts.flip(1)], 1), SAEConfig(d_in=64, d_sae=64, k=3), tc, Crosscoder)}
    torch.set_num_threads(2)
    try:
        trained = train_saes(jobs)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    assert list(trained) == list(jobs)
    for key, job in jobs.items():
        alone = train_sae(job.acts, job.sae_cfg, job.cfg, job.model_cls, job.targets)
        assert type(trained[key].sae) is job.model_cls
        assert trained[key].history == alone.history
        for name, tensor in alone.sae.state_dict().items():
            assert torch.equal(trained[key].sae.state_dict()[name], tensor), (key, name)
    assert train_saes({}) == {}


def test_a_stream_of_batches_trains_and_sets_the_threshold_from_its_last_steps(data):
    """An iterable of batches (length unknown in advance, here past the per-step buffer's first 1024 steps): BatchTopK's
    inference threshold is the mean of the last 10% of per-step thresholds, which keeps the held-out L0 near k."""
    acts, _ = data
    batches = (acts[i % 250 * 64:(i % 250 + 1) * 64] for i in range(1300))
    res = train_sae(batches, SAEConfig(d_in=32, d_sae=64, k=3), TrainConfig(batch_size=64, dead_window=20_000))
    assert res.history[-1]["step"] == 1200 and res.history[-1]["tokens"] == 1201 * 64
    m = reconstruction_metrics(res.sae, acts[16_000:])
    assert 0 < float(res.sae.threshold) < float("inf") and m["fvu"] < 0.2 and abs(m["l0"] - 3) < 1.0, m


def test_metrics_match_reference():
    gen = torch.Generator().manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=8, d_sae=16, architecture="topk", k=2), generator=gen)
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(16, generator=gen))
        sae.b_enc[0] = -100  # latent 0 can never fire
    x = torch.randn(500, 8, generator=gen)
    m = reconstruction_metrics(sae, x, batch_size=64)
    f = sae.encode(x)
    x_hat = sae.decode(f)
    x_hat = x_hat.detach()
    assert m["fvu"] == pytest.approx(float(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()), rel=1e-5)
    assert m["l0"] == pytest.approx(2.0)
    density = (f > 0).float().mean(0)
    assert m["dead_fraction"] == pytest.approx(float((density == 0).float().mean()))
    assert m["dead_fraction"] >= 1 / 16
    assert m["dense_fraction"] == pytest.approx(float((density > 0.1).float().mean()))


def test_batchtopk_keeps_k_per_token_on_average():
    gen = torch.Generator().manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=8, d_sae=32, k=4), generator=gen)
    x = torch.randn(50, 8, generator=gen)
    codes = sae.sparse_codes(x)
    pre = sae.pre_activations(x).detach()
    assert len(codes.value) == 200
    torch.testing.assert_close(codes.pre, sae.pre_activations(x).detach())
    assert float(codes.value.detach().min()) >= float(pre.reshape(-1).topk(200).values.min().clamp_min(0))
    assert float(codes.threshold) == pytest.approx(float(pre.reshape(-1).topk(200).values.min().clamp_min(0)))


@pytest.mark.parametrize("n_keep", [1, 40, 700, 1000, 1024])
@pytest.mark.parametrize("stride", [7, 8])
def test_batch_top_indices_is_exact(n_keep, stride):
    gen = torch.Generator().manual_seed(1)
    score = torch.randn(32, 32, generator=gen)
    expected = score.reshape(-1).topk(n_keep).indices.sort().values
    torch.testing.assert_close(batch_top_indices(score, n_keep, stride), expected)
    # a sample that misses the large values forces the exact fallback
    skewed = score.clone().reshape(-1)
    skewed[1::8] += 100
    got = batch_top_indices(skewed.reshape(32, 32), n_keep, stride)
    torch.testing.assert_close(got, skewed.topk(n_keep).indices.sort().values)


@pytest.mark.parametrize("n_keep", [5000, 16384])
def test_batch_top_indices_at_its_default_stride_takes_the_sampled_path_and_is_exact(n_keep):
    """A [1024, 128] batch of pre-activations with ties at many values: the default (odd) stride's sample gives
    a bound with enough candidates, and the result equals the full top-k with every tie at the cut kept."""
    gen = torch.Generator().manual_seed(2)
    score = torch.randn(1024, 128, generator=gen).mul(8).round()  # values repeat: ties at the cut
    flat = score.reshape(-1)
    cut = flat.topk(n_keep).values.min()
    expected = (flat >= cut).nonzero().squeeze(1)
    bound = nth_largest(flat[::61], (3 * n_keep) // (2 * 61))
    assert int((flat >= bound).sum()) >= n_keep  # the sampled path, not the fallback
    torch.testing.assert_close(batch_top_indices(score, n_keep), expected)


@pytest.mark.parametrize("n", [1, 3, 5, 6, 10])
def test_nth_largest_is_the_nth_value_in_descending_order(n):
    values = torch.tensor([3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0, 5.0, 3.0])
    assert float(nth_largest(values, n)) == float(values.sort(descending=True).values[n - 1])


@pytest.mark.parametrize("arch", ["batchtopk", "topk"])
def test_sparse_training_path_matches_dense_reference(arch):
    """Loss and gradients of sparse_codes + decode_sparse equal the dense [batch, d_sae] computation."""
    gen = torch.Generator().manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=16, d_sae=64, k=4, architecture=arch), generator=gen)
    with torch.no_grad():
        sae.b_dec.normal_(generator=gen)
        sae.b_enc.normal_(generator=gen)
    x = torch.randn(50, 16, generator=gen)
    loss = ((sae.decode_sparse(sae.sparse_codes(x)) - x) ** 2).sum()
    grads = torch.autograd.grad(loss, list(sae.parameters()))
    pre = sae.pre_activations(x)
    if arch == "topk":
        idx = pre.topk(4, dim=-1).indices
        f = torch.zeros_like(pre).scatter(-1, idx, torch.relu(pre.gather(-1, idx)))
    else:
        idx = pre.detach().reshape(-1).topk(200).indices
        f = torch.zeros(50 * 64).scatter(0, idx, torch.relu(pre.reshape(-1)[idx])).reshape(50, 64)
    ref = ((f @ sae.W_dec + sae.b_dec - x) ** 2).sum()
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-6)
    for g, r in zip(grads, torch.autograd.grad(ref, list(sae.parameters()))):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-3)


def test_aux_k_loss_reaches_only_dead_latents():
    gen = torch.Generator().manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=8, d_sae=16, architecture="topk", k=2), generator=gen)
    with torch.no_grad():
        sae.b_enc.fill_(-5.0)  # every pre-activation negative: fully dead latents still get a gradient
    x = torch.randn(64, 8, generator=gen)
    pre = sae.pre_activations(x)
    residual = torch.randn(64, 8, generator=gen)
    dead = torch.zeros(16, dtype=torch.bool)
    dead[[1, 5, 9]] = True
    loss = _aux_k_loss(sae, x, pre.detach(), residual, dead, aux_k=2)
    # reference: each token's two largest dead pre-activations (before ReLU) reconstruct the residual
    dead_pre = pre[:, dead]
    vals, idx = dead_pre.topk(2, dim=1)
    f = torch.zeros_like(dead_pre).scatter(1, idx, vals)
    ref = ((f @ sae.W_dec[dead] - residual) ** 2).sum(-1).mean()  # 3 dead >= aux_k: no damping
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-5)
    loss.backward()
    grad_rows = sae.W_dec.grad.norm(dim=1) > 0
    assert grad_rows[dead].all() and not grad_rows[~dead].any()
    assert (sae.W_enc.grad[:, ~dead] == 0).all() and (sae.W_enc.grad[:, dead] != 0).any()
    # fewer dead latents than aux_k: the loss is damped by n_dead / aux_k (sparsify)
    damped = _aux_k_loss(sae, x, pre.detach(), residual, dead, aux_k=6)
    f3 = torch.zeros_like(dead_pre).scatter(1, dead_pre.topk(3, dim=1).indices, dead_pre.topk(3, dim=1).values)
    ref3 = ((f3 @ sae.W_dec[dead] - residual) ** 2).sum(-1).mean() * 3 / 6
    assert float(damped.detach()) == pytest.approx(float(ref3.detach()), rel=1e-5)


def test_random_baseline_is_low():
    b = random_baseline(128, 256, 128)
    assert 0.1 < b["mmcs_max"] < 0.4 and b["n_shared"] == 0


def test_compare_dictionaries_one_to_one():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(10, 6, generator=gen)
    perm = torch.randperm(10, generator=gen)
    b = torch.cat([a[perm] * 2.0, torch.randn(5, 6, generator=gen)])
    r = compare_dictionaries(a, b)
    assert r["mmcs_one_to_one"] == pytest.approx(1.0) and r["n_shared"] == 10
    for i, j, c in r["pairs"]:
        assert perm[j] == i and c == pytest.approx(1.0)


@pytest.mark.parametrize("arch", ["batchtopk", "topk", "relu"])
def test_saelens_export_roundtrip(tmp_path, data, arch):
    sae_lens = pytest.importorskip("sae_lens")
    acts, _ = data
    cfg = SAEConfig(d_in=32, d_sae=64, architecture=arch, k=3, tied=arch == "relu",
                    hook_name="blocks.1.hook_resid_post")
    sae = train_sae(acts, cfg, TrainConfig(batch_size=256, n_tokens=20_000)).sae
    save_sae(sae, tmp_path / "sae", metadata={"model_name": "tiny"})
    loaded = sae_lens.SAE.load_from_disk(tmp_path / "sae")
    assert loaded.cfg.metadata.hook_name == "blocks.1.hook_resid_post"
    x = acts[:300]
    ours = sae.encode(x)
    assert (ours > 0).any()
    torch.testing.assert_close(loaded.encode(x), ours, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loaded.decode(ours), sae.decode(ours), rtol=1e-5, atol=1e-5)
    back = load_sae(tmp_path / "sae")
    torch.testing.assert_close(back.encode(x), ours)


def test_sae_config_refuses_k_wider_than_the_dictionary():
    from rewardlab.errors import InputError

    with pytest.raises(InputError, match="k = 17 active latents do not fit a dictionary of 16"):
        SAEConfig(d_in=8, d_sae=16, k=17)
    with pytest.raises(InputError, match="l1_coefficient must be at least 0"):
        SAEConfig(d_in=8, d_sae=16, architecture="relu", l1_coefficient=-1.0)
    assert SAEConfig(d_in=8, d_sae=16, architecture="relu", k=10_000).k == 10_000  # relu ignores k


def test_an_sae_folder_whose_weights_do_not_match_its_config_or_activations_is_one_clear_error(tmp_path):
    from safetensors.torch import load_file, save_file

    from rewardlab.errors import InputError

    sae = SparseAutoencoder(SAEConfig(d_in=8, d_sae=16, k=2, hook_name="blocks.0.hook_resid_post"))
    save_sae(sae, tmp_path / "sae", metadata={"model_name": "tiny"})
    weights = tmp_path / "sae" / "sae_weights.safetensors"
    tensors = load_file(str(weights))
    tensors["W_dec"] = torch.zeros(32, 8)  # from a wider SAE
    save_file(tensors, str(weights))
    with pytest.raises(InputError, match=r"W_dec has shape \(32, 8\), cfg.json says \(16, 8\)"):
        load_sae(tmp_path / "sae")
    with pytest.raises(InputError, match="activations of width 12 given to an SAE of width 8"):
        sae.encode(torch.zeros(3, 12))


def test_gather_pre_backward_equals_dense_autograd():
    """The sparse backward of the gathered pre-activations (repeated pairs and unused latents included) equals
    autograd through the dense pre = x @ W_enc + encoder_bias(), for every parameter and for x."""
    gen = torch.Generator().manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=6, d_sae=10, k=2), generator=gen).double()
    with torch.no_grad():
        sae.b_dec.normal_(generator=gen)
        sae.b_enc.normal_(generator=gen)
    x = torch.randn(7, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    rows = torch.tensor([0, 0, 3, 3, 3, 6, 2, 0])
    latent = torch.tensor([4, 1, 4, 9, 4, 0, 1, 4])  # latents 2, 3, 5-8 unused; (3, 4) twice
    weight = torch.randn(8, generator=gen, dtype=torch.float64)
    params = [x, sae.W_enc, sae.b_enc, sae.b_dec]
    pre = (x @ sae.W_enc + sae.encoder_bias()).detach()
    got = torch.autograd.grad((sae.gather_pre(x, pre, Pairs(rows, latent, 10)) * weight).sum(), params)
    ref = torch.autograd.grad(((x @ sae.W_enc + sae.encoder_bias())[rows, latent] * weight).sum(), params)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n_keys", [1, 512, 70_000, 300_000])
def test_stable_argsort_equals_torchs_stable_argsort(n_keys):
    """The CPU radix path (one 16-bit pass, or two above 2^16 keys) gives torch's stable permutation, ties in order."""
    gen = torch.Generator().manual_seed(3)
    keys = torch.randint(0, n_keys, (5000,), generator=gen)
    keys[::7] = keys[0]  # many ties
    torch.testing.assert_close(stable_argsort(keys, n_keys), torch.argsort(keys, stable=True), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_indices_at_least_equals_nonzero_of_the_comparison(dtype):
    """numpy's flatnonzero (float32, float64) and torch's nonzero (other dtypes) give the same increasing indices,
    ties at the bound, infinities and NaN (never >= anything) included."""
    gen = torch.Generator().manual_seed(4)
    flat = torch.randn(4000, generator=gen).mul(4).round().to(dtype)
    flat[[3, 10]], flat[20], flat[30] = float("inf"), float("-inf"), float("nan")
    for bound in (flat[0], torch.tensor(0.0, dtype=dtype), torch.tensor(float("inf"), dtype=dtype)):
        torch.testing.assert_close(indices_at_least(flat, bound), (flat >= bound).nonzero().squeeze(1))


def test_decode_sparse_backward_equals_dense_autograd():
    """The sparse decoder's gradients (values and W_dec; repeated pairs, a token without pairs, unused latents)
    equal autograd through the dense f @ W_dec + b_dec."""
    gen = torch.Generator().manual_seed(5)
    sae = SparseAutoencoder(SAEConfig(d_in=6, d_sae=10, k=2), generator=gen).double()
    rows = torch.tensor([0, 0, 0, 2, 2, 3])  # grouped by token; token 1 has no pairs
    latent = torch.tensor([4, 1, 4, 9, 0, 4])
    value = torch.rand(6, generator=gen, dtype=torch.float64, requires_grad=True)
    offsets = torch.tensor([0, 3, 3, 5])
    codes = SparseCodes(Pairs(rows, latent, 10), value, offsets, torch.zeros(4, 10), torch.zeros(()))
    target = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    params = [value, sae.W_dec, sae.b_dec]
    got = torch.autograd.grad(((sae.decode_sparse(codes) - target) ** 2).sum(), params)
    f = torch.zeros(4, 10, dtype=torch.float64).index_put((rows, latent), value, accumulate=True)
    ref = torch.autograd.grad(((f @ sae.W_dec + sae.b_dec - target) ** 2).sum(), params)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)
