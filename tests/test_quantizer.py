import dataclasses
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from selftok_hf.configuration_selftok import SELFTOK_TINY_CONFIG, SelftokConfig
from selftok_hf.quantizer import CosineVectorQuantizer, QuantizerSettings


def make(C=8, D=4, K=4, **kw):
    torch.manual_seed(0)
    return CosineVectorQuantizer(input_dim=6, num_positions=K, settings=QuantizerSettings(codebook_size=C, code_dim=D, token_dim=D, **kw))


def test_eval_is_nearest_cosine_and_stateless():
    q = make().eval()
    q.initted.fill_(1)
    before = {k: v.clone() for k, v in q.state_dict().items()}
    x = torch.randn(3, 4, 6)
    out = q(x)
    z = F.normalize(q.project_in(x), dim=-1)
    assert torch.equal(out.ids, (z @ q.embed.t()).argmax(-1))
    assert out.loss == 0
    assert all(torch.equal(v, q.state_dict()[k]) for k, v in before.items())


def test_kmeans_init_runs_once_and_sets_counts():
    q = make(C=4).train()
    x = torch.randn(8, 4, 6)
    q(x)
    assert bool(q.initted)
    assert torch.allclose(q.embed.norm(dim=-1), torch.ones(4), atol=1e-5)
    embed = q.embed.clone()
    q.eval()(x)
    assert torch.equal(q.embed, embed)


def test_ema_update_against_hand_computation():
    q = make(C=3, D=2, K=2, dead_code_threshold=0.0).train()
    q.initted.fill_(1)
    q.project_in = torch.nn.Identity()
    q.embed.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    q.embed_avg.copy_(q.embed * 2)
    q.cluster_size.fill_(2.0)
    z = F.normalize(torch.tensor([[[2.0, 0.1], [0.1, 3.0]]]), dim=-1)  # B=1, K=2 -> ids 0, 1
    out = q(z)
    assert out.ids.tolist() == [[0, 1]]
    d = 0.99
    counts = torch.tensor([2.0, 2.0, 2.0]) * d + torch.tensor([1.0, 1.0, 0.0]) * (1 - d)
    avg = torch.tensor([[2.0, 0.0], [0.0, 2.0], [-2.0, 0.0]]) * d
    avg[0] += z[0, 0] * (1 - d)
    avg[1] += z[0, 1] * (1 - d)
    total = counts.sum()
    smoothed = (counts + 1e-5) / (total + 3e-5) * total
    assert torch.allclose(q.cluster_size, counts)
    assert torch.allclose(q.embed, F.normalize(avg / smoothed[:, None], dim=-1), atol=1e-6)
    # position usage: first update uses decay 0.3
    onehot = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])
    assert torch.allclose(q.position_code_usage, torch.full((2, 3), 1 / 3) * 0.3 + onehot * 0.7)
    # commitment = mean squared distance to the chosen codes
    expected_commit = F.mse_loss(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), z[0])
    assert abs(out.stats["commitment"] - expected_commit.item()) < 1e-6


def test_straight_through_gradient():
    q = make().train()
    x = torch.randn(2, 4, 6, requires_grad=True)
    out = q(x)
    (out.quantized.sum() + out.loss).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_dead_codes_are_reactivated_from_batch():
    q = make(C=16, D=4, K=4).train()
    q.initted.fill_(1)
    x = torch.randn(2, 4, 6)
    out = q(x)
    assert out.stats["reactivated_codes"] > 0
    z = F.normalize(q.project_in(x), dim=-1).reshape(-1, 4)
    dead_rows = q.cluster_size == q.cluster_size.min()
    # each re-seeded code is one of the batch's projected features
    for row in q.embed[dead_rows]:
        assert (z - row).abs().sum(-1).min() < 1e-5


def test_position_weights_favour_low_perplexity_positions():
    q = make(C=8, K=2)
    q.position_code_usage.copy_(torch.stack([torch.full((8,), 1 / 8), F.one_hot(torch.tensor(3), 8).float() * 0.93 + 0.01]))
    w = q.position_weights()
    assert torch.allclose(w.sum(), torch.tensor(1.0)) and w[1] > w[0]


def test_settings_are_the_config_fields_with_the_same_defaults():
    config = SelftokConfig(**SELFTOK_TINY_CONFIG, ema_decay=0.9, diversity_schedule=[0.2, 0.4])
    settings = QuantizerSettings.from_config(config)
    assert settings == QuantizerSettings(**{k: getattr(config, k) for k in dataclasses.asdict(settings)})
    assert settings.ema_decay == 0.9 and settings.diversity_schedule == (0.2, 0.4) and settings.codebook_size == 64
    assert QuantizerSettings.from_config(SelftokConfig()) == QuantizerSettings()  # one set of release defaults
    q = CosineVectorQuantizer(config.query_dim, num_positions=config.num_image_tokens, settings=settings)
    assert q.settings == settings and q.ema_decay == 0.9 and q.dead_code_threshold == 0.2
    assert isinstance(q.post_norm, torch.nn.LayerNorm) and q.position_code_usage.shape == (32, 64)
    assert not isinstance(make(post_norm=False).post_norm, torch.nn.LayerNorm) and make(post_norm=False).settings.post_norm is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.ema_decay = 0.5


def test_separate_settings_arguments_are_deprecated_and_build_the_same_quantizer():
    torch.manual_seed(0)
    new = CosineVectorQuantizer(6, num_positions=4, settings=QuantizerSettings(codebook_size=16, code_dim=4, token_dim=4, ema_decay=0.9))
    for args, kwargs in [
        ((6, 16, 4, 4, 4), {"ema_decay": 0.9}),
        ((6, 16, 4, 4, 4, True, 0.9), {}),
        ((), {"input_dim": 6, "codebook_size": 16, "code_dim": 4, "token_dim": 4, "num_positions": 4, "ema_decay": 0.9}),
    ]:
        torch.manual_seed(0)
        with pytest.warns(FutureWarning, match=r"num_positions=4, settings=QuantizerSettings\(codebook_size=16, code_dim=4, token_dim=4, ema_decay=0.9\)"):
            old = CosineVectorQuantizer(*args, **kwargs)
        assert old.settings == new.settings
        assert all(torch.equal(v, new.state_dict()[k]) for k, v in old.state_dict().items())
    with pytest.raises(TypeError, match="token_dim"):  # the old signature's errors
        CosineVectorQuantizer(6, 16, 4)
    with pytest.raises(TypeError, match="not both"):
        CosineVectorQuantizer(6, 16, 4, 4, 4, settings=QuantizerSettings())
    with pytest.raises(TypeError, match="num_positions"):
        CosineVectorQuantizer(6, settings=QuantizerSettings())


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _ddp_worker(rank, world, port, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)  # same initial weights everywhere
    q = CosineVectorQuantizer(6, num_positions=4, settings=QuantizerSettings(codebook_size=16, code_dim=4, token_dim=4)).train()
    torch.manual_seed(100 + rank)  # different data (and different local RNG) on each rank
    for _ in range(3):
        q(torch.randn(2, 4, 6))
    # numpy arrays are pickled by value; tensors would be shared through file descriptors that vanish with the worker.
    queue.put((rank, {k: v.numpy().copy() for k, v in q.state_dict().items() if not k.startswith(("project", "post"))}))
    dist.destroy_process_group()


@pytest.mark.slow
def test_codebook_identical_across_two_processes():
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    a, b = results[0], results[1]
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    assert bool(a["initted"])
