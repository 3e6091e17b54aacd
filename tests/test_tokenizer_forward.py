"""SelftokModel.forward serves training (issue 17, item 4): in eval mode it is encode(), in training mode the quantizer's
training step with its loss; the tokenizer trainer's objective goes through it and gives the numbers of the former
direct encoder + quantizer path, exactly."""

import copy

import torch

from selftok_hf import (
    SELFTOK_TINY_CONFIG,
    SelftokConfig,
    SelftokEncoderOutput,
    SelftokModel,
    SelftokModelOutput,
)
from selftok_hf.modeling_selftok_decoder import (
    SELFTOK_DECODER_TINY_CONFIG,
    SelftokDecoderTransformer,
)
from selftok_hf.token_schedule import to_ar_order
from selftok_hf.training.tokenizer import (
    SelftokTokenizerObjective,
    scale_token_gradients,
)


def _tokenizer() -> SelftokModel:
    torch.manual_seed(0)
    model = SelftokModel(SelftokConfig(**SELFTOK_TINY_CONFIG))
    for block in model.encoder.blocks:  # non-zero adaLN, so that the tokens depend on the image
        torch.nn.init.normal_(block.query_modulation.weight, std=0.5)
    return model


def _decoder(config: SelftokConfig) -> SelftokDecoderTransformer:
    torch.manual_seed(1)
    decoder = SelftokDecoderTransformer(
        **{
            **SELFTOK_DECODER_TINY_CONFIG,
            "num_image_tokens": config.num_image_tokens,
            "token_dim": config.token_dim,
            "in_channels": config.latent_channels,
            "out_channels": config.latent_channels,
            "sample_size": config.latent_size,
        }
    )
    with torch.no_grad():  # zero-initialised gates and head would give the tokens no gradient at all
        for param in decoder.parameters():
            if not param.any():
                param.normal_(std=0.05)
    return decoder


def _latents(config: SelftokConfig, batch: int = 4, seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, config.latent_channels, config.latent_size, config.latent_size, generator=g)


def _assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def _assert_same_grads(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert (pa.grad is None) == (pb.grad is None), name
        if pa.grad is not None:
            assert torch.equal(pa.grad, pb.grad), name


def test_eval_forward_is_encode_without_loss_and_changes_nothing():
    model = _tokenizer().eval()
    latents = _latents(model.config)
    before = copy.deepcopy(model.state_dict())
    out = model(latents=latents)
    expected = model.encode(latents=latents)
    assert isinstance(out, SelftokModelOutput) and isinstance(out, SelftokEncoderOutput)
    assert out.loss is None and out.quantizer_stats is None
    assert out.keys() == expected.keys()
    for key in expected:
        assert torch.equal(out[key], expected[key]), key
    # Indexing and tuples as before (forward was encode): the training-only fields are absent.
    positional = model(latents, return_dict=False)
    assert len(positional) == 4
    assert all(torch.equal(a, b) for a, b in zip(positional, model.encode(latents=latents, return_dict=False)))
    assert torch.equal(model(latents)[0], expected.token_ids)
    for key, value in before.items():
        assert torch.equal(model.state_dict()[key], value), key


def test_training_forward_is_the_quantizer_step_with_its_loss():
    model = _tokenizer().train()
    reference = copy.deepcopy(model)
    latents = _latents(model.config)

    torch.manual_seed(3)
    out = model(latents=latents)
    torch.manual_seed(3)
    features = reference.encoder(latents)
    quantized = reference.quantizer(features)  # the former trainer's calls

    assert out.loss.ndim == 0 and out.loss.requires_grad and torch.equal(out.loss, quantized.loss)
    assert out.quantizer_stats == quantized.stats
    assert set(out.quantizer_stats) == {"commitment", "diversity_entropy", "usage_perplexity", "reactivated_codes"}
    assert torch.equal(out.token_ids, to_ar_order(quantized.ids))
    assert torch.equal(out.token_embeddings, to_ar_order(quantized.quantized))
    assert torch.equal(out.query_features, to_ar_order(features))
    assert torch.equal(out.projected_features, to_ar_order(quantized.projected))
    assert bool(model.quantizer.initted)  # the step ran: k-means, then the EMA update
    _assert_same_state(model, reference)

    weights = torch.linspace(-1, 1, out.token_embeddings.numel()).view_as(out.token_embeddings)
    (out.loss + (to_ar_order(weights) * out.token_embeddings).sum()).backward()
    (quantized.loss + (weights * quantized.quantized).sum()).backward()
    assert model.encoder.queries.grad.abs().sum() > 0
    _assert_same_grads(model, reference)


def _former_objective(tokenizer, decoder, latents, cfg_dropout):
    """The tokenizer trainer's objective as it was, reaching into ``.encoder`` and ``.quantizer``."""
    B = latents.shape[0]
    quantized = tokenizer.quantizer(tokenizer.encoder(latents))
    tau = torch.rand(B)
    dropped = torch.rand(B) < cfg_dropout
    visibility = tokenizer.config.token_schedule.training_visibility(tau, dropped)
    codes = scale_token_gradients(quantized.quantized)
    noise = torch.randn_like(latents)
    t = tau.view(B, 1, 1, 1)
    noisy = t * noise + (1 - t) * latents
    velocity = decoder(hidden_states=noisy, timestep=tau, token_codes=codes.to(noisy.dtype), visibility=visibility).sample
    mse = (velocity.float() - (noise - latents).float()).pow(2).flatten(1).mean(1).mean()
    return mse + quantized.loss, mse, quantized


def test_objective_steps_equal_the_former_direct_path_exactly():
    tokenizer = _tokenizer()
    objective = SelftokTokenizerObjective(tokenizer, _decoder(tokenizer.config), cfg_dropout=0.5).train()
    reference = copy.deepcopy(objective)
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-3) for m in (objective, reference)]
    for step in range(2):  # the first step initialises the codebook by k-means, the second updates an initialised one
        latents = _latents(tokenizer.config, seed=10 + step)
        for optimizer in optimizers:
            optimizer.zero_grad()
        torch.manual_seed(step)
        loss, logs = objective(latents)
        loss.backward()
        torch.manual_seed(step)
        expected, mse, quantized = _former_objective(reference.image_tokenizer, reference.decoder, latents, cfg_dropout=0.5)
        expected.backward()

        assert torch.equal(loss, expected), step
        assert logs["mse"] == mse.item() and logs["quantizer_loss"] == quantized.loss.item()
        assert {k: logs[k] for k in quantized.stats} == quantized.stats
        assert objective.image_tokenizer.encoder.queries.grad.abs().sum() > 0
        assert objective.decoder.transformer_blocks[0].attn.add_q_proj.weight.grad.abs().sum() > 0
        _assert_same_grads(objective, reference)
        _assert_same_state(objective, reference)  # the codebook buffers included
        for optimizer in optimizers:
            optimizer.step()
        _assert_same_state(objective, reference)


def test_objective_in_eval_mode_has_no_quantizer_step():
    tokenizer = _tokenizer()
    objective = SelftokTokenizerObjective(tokenizer, _decoder(tokenizer.config)).eval()
    before = copy.deepcopy(objective.state_dict())
    with torch.no_grad():
        loss, logs = objective(_latents(tokenizer.config))
    assert loss.item() == logs["mse"] and logs["quantizer_loss"] == 0.0
    assert not {"commitment", "reactivated_codes"} & logs.keys()
    for key, value in before.items():
        assert torch.equal(objective.state_dict()[key], value), key
