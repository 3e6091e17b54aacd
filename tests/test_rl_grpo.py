"""Simplified GRPO: advantages, k3 KL and loss against hand-computed values; the constrained support of
training equals the sampler's; one update moves log-probs in the direction of the advantage."""

import math

import pytest
import torch
from transformers import TemperatureLogitsWarper

from selftok_hf import SelftokConfig
from selftok_hf.configuration_selftok import SELFTOK_TINY_CONFIG
from selftok_hf.generation_selftok import (
    SelftokVisualGrammarLogitsProcessor,
    generate_image_tokens,
)
from selftok_hf.image_processing_selftok import SelftokImageProcessorPil
from selftok_hf.modeling_selftok_lm import add_visual_tokens
from selftok_hf.processing_selftok import SelftokProcessor
from selftok_hf.rl.grpo import (
    constrained_log_distributions,
    constrained_logprobs,
    group_advantages,
    grpo_loss,
    k3_kl,
)
from selftok_hf.testing.tiny_vlm import tiny_language_model, tiny_text_tokenizer

K, CODES = 8, 16


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def tiny_vlm():
    tokenizer = tiny_text_tokenizer()
    model = tiny_language_model("llama", len(tokenizer), seed=0, tokenizer=tokenizer)
    image_config = SelftokConfig(**dict(SELFTOK_TINY_CONFIG, num_image_tokens=K, codebook_size=CODES, schedule_tokens_per_stage=[3, 2, 1, 1, 1]))
    vocabulary = add_visual_tokens(model, tokenizer, image_config, init="mean", seed=0)
    # Spread the new rows so that the policy is far from uniform and differs between prompts.
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for weight in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
            weight[vocabulary.first_visual_id :] += 0.5 * torch.randn(weight[vocabulary.first_visual_id :].shape, generator=g)
    processor = SelftokProcessor(image_processor=SelftokImageProcessorPil(), tokenizer=tokenizer, visual_vocabulary=vocabulary)
    return model, processor, vocabulary


def prompts_batch(processor, prompts):
    return processor.pad([processor.chat_prompt(p, generate_image=True) for p in prompts], padding_side="left")


# ------------------------------------------------------------------------------------------ math
def test_group_advantages_hand_computed():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5])
    # Group 1: mean 0.25, unbiased std sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5; group 2: all equal -> 0.
    expected = torch.tensor([0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0]) / (0.5 + 1e-4)
    torch.testing.assert_close(group_advantages(rewards, 4), expected)
    torch.testing.assert_close(group_advantages(torch.tensor([3.0, 1.0]), 2, eps=0.0), torch.tensor([1.0, -1.0]) / math.sqrt(2))
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(rewards, 3)
    with pytest.raises(ValueError, match=">= 2"):
        group_advantages(rewards, 1)


def test_k3_kl_hand_computed():
    logp, ref = torch.log(torch.tensor([0.5, 0.3])), torch.log(torch.tensor([0.25, 0.3]))
    # exp(ref - logp) - (ref - logp) - 1 = 0.5 - ln 0.5 - 1 and 0 where the log-probs agree.
    torch.testing.assert_close(k3_kl(logp, ref), torch.tensor([0.5 + math.log(2) - 1, 0.0]))
    assert (k3_kl(torch.randn(100), torch.randn(100)) >= 0).all()


def test_grpo_loss_value_and_gradient_hand_computed():
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -1.5]], requires_grad=True)
    ref = torch.full((2, 2), -1.0)
    advantages = torch.tensor([1.0, -1.0])
    out = grpo_loss(logp, advantages, ref, beta=0.04)
    # policy: -mean(1*-1, 1*-2, -1*-0.5, -1*-1.5) = 0.25; k3 at ref - logp = (0, 1, -0.5, 0.5).
    kl = (0 + (math.e - 2) + (math.exp(-0.5) - 0.5) + (math.exp(0.5) - 1.5)) / 4
    assert out.policy_loss.item() == pytest.approx(0.25)
    assert out.kl.item() == pytest.approx(kl, rel=1e-6)
    assert out.loss.item() == pytest.approx(0.25 + 0.04 * kl, rel=1e-6)
    out.loss.backward()
    # d/dlogp = (-A + beta * (1 - exp(ref - logp))) / (N K)
    expected = (-advantages[:, None] + 0.04 * (1 - torch.exp(ref - logp.detach()))) / 4
    torch.testing.assert_close(logp.grad, expected)
    with pytest.raises(ValueError, match="needs ref_logprobs"):
        grpo_loss(logp, advantages, None, beta=0.04)
    with pytest.raises(ValueError, match="advantages must have shape"):
        grpo_loss(logp, torch.ones(3), ref)


def test_kl_against_the_sampling_policy_has_zero_gradient():
    # Why the reference is not the policy that just sampled: at pi = pi_ref the k3 term's gradient vanishes.
    logp = torch.randn(3, 5, requires_grad=True)
    advantages = torch.tensor([0.5, -1.0, 0.5])
    (g_with_kl,) = torch.autograd.grad(grpo_loss(logp, advantages, logp.detach(), beta=0.04).loss, logp)
    (g_without,) = torch.autograd.grad(grpo_loss(logp, advantages, None, beta=0.0).loss, logp)
    torch.testing.assert_close(g_with_kl, g_without)


# ----------------------------------------------------------------------------- constrained support
def test_training_distribution_equals_the_samplers(tiny_vlm):
    model, processor, vocabulary = tiny_vlm
    batch = prompts_batch(processor, ["a red circle", "two squares left of a big blue triangle"])
    temperature = 0.7
    ids = generate_image_tokens(
        model, batch["input_ids"], batch["attention_mask"], vocabulary, temperature=temperature, generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        trained = constrained_log_distributions(model, batch["input_ids"], batch["attention_mask"], ids, vocabulary, temperature)
    # The sampler's distribution at each step, rebuilt as `model.generate` would with the public processors,
    # one row at a time without padding.
    grammar, warper = SelftokVisualGrammarLogitsProcessor(vocabulary), TemperatureLogitsWarper(temperature)
    for row in range(2):
        prefix = batch["input_ids"][row][batch["attention_mask"][row].bool()][None]
        for k in range(K):
            with torch.no_grad():
                scores = model(input_ids=prefix).logits[:, -1].float()
            sampler = torch.log_softmax(warper(prefix, grammar(prefix, scores)), -1)[0]
            support = torch.isfinite(sampler)
            assert torch.equal(support, torch.isfinite(trained[row, k]))  # identical supports ...
            assert support.sum() == CODES and support[vocabulary.first_visual_id : vocabulary.end_visual_id].all()
            torch.testing.assert_close(trained[row, k][support], sampler[support], atol=2e-5, rtol=1e-5)  # ... and values
            prefix = torch.cat([prefix, vocabulary.to_lm_ids(ids[row, k : k + 1])[None]], dim=1)
    # Greedy decoding picks the arg-max of the training distribution at every step.
    greedy = generate_image_tokens(model, batch["input_ids"], batch["attention_mask"], vocabulary, do_sample=False)
    with torch.no_grad():
        teacher = constrained_log_distributions(model, batch["input_ids"], batch["attention_mask"], greedy, vocabulary)
    assert torch.equal(vocabulary.to_codebook_ids(teacher.argmax(-1)), greedy)


def test_logprobs_and_entropy(tiny_vlm):
    model, processor, vocabulary = tiny_vlm
    batch = prompts_batch(processor, ["a circle", "three yellow squares and a green circle"])
    ids = torch.randint(0, CODES, (2, K), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logp, entropy = constrained_logprobs(model, batch["input_ids"], batch["attention_mask"], ids, vocabulary, return_entropy=True)
        dist = constrained_log_distributions(model, batch["input_ids"], batch["attention_mask"], ids, vocabulary)
        # Left padding changes nothing: each row alone gives the same numbers.
        for row in range(2):
            alone = prompts_batch(processor, [["a circle", "three yellow squares and a green circle"][row]])
            single, _ = constrained_logprobs(model, alone["input_ids"], alone["attention_mask"], ids[row : row + 1], vocabulary)
            torch.testing.assert_close(single[0], logp[row], atol=1e-5, rtol=1e-5)
    assert logp.shape == entropy.shape == (2, K)
    probs = dist.exp()
    visual = probs[..., vocabulary.first_visual_id : vocabulary.end_visual_id]
    torch.testing.assert_close(visual.sum(-1), torch.ones(2, K))
    torch.testing.assert_close(entropy, -(visual * visual.log()).sum(-1))
    assert (entropy <= math.log(CODES) + 1e-5).all() and (entropy > 0).all()
    with pytest.raises(ValueError, match="begin-of-image"):
        constrained_logprobs(model, batch["input_ids"][:, :-1], batch["attention_mask"][:, :-1], ids, vocabulary)
    with pytest.raises(ValueError, match=r"image_token_ids must have shape \(2, 8\)"):
        constrained_logprobs(model, batch["input_ids"], batch["attention_mask"], ids[:, :4], vocabulary)


# ---------------------------------------------------------------------------------- one RL update
def test_one_update_moves_logprobs_in_the_direction_of_the_advantage(tiny_vlm):
    model, processor, vocabulary = tiny_vlm
    model = type(model)(model.config)
    model.load_state_dict(tiny_vlm[0].state_dict())  # a private copy: the fixture stays untouched
    group = 4
    batch = prompts_batch(processor, ["a red circle"] * group)
    ids = generate_image_tokens(model, batch["input_ids"], batch["attention_mask"], vocabulary, generator=torch.Generator().manual_seed(5))
    assert len({tuple(r) for r in ids.tolist()}) == group
    advantages = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), group)  # (+, -, -, +)
    with torch.no_grad():
        before, _ = constrained_logprobs(model, batch["input_ids"], batch["attention_mask"], ids, vocabulary)
    params = [p for p in model.parameters() if p.requires_grad]
    logp, _ = constrained_logprobs(model, batch["input_ids"], batch["attention_mask"], ids, vocabulary)
    loss = grpo_loss(logp, advantages, before, beta=0.04).loss
    loss_grad = torch.autograd.grad(loss, params, retain_graph=True)
    # First-order prediction of each sample's change of log pi(image) under a plain gradient step of size lr:
    # -lr * <grad log pi(image_i), grad L>.
    lr = 0.01
    predicted = torch.stack([
        -lr * sum((g * lg).sum() for g, lg in zip(torch.autograd.grad(logp[i].sum(), params, retain_graph=True), loss_grad)) for i in range(group)
    ])
    with torch.no_grad():
        for p, g in zip(params, loss_grad):
            p -= lr * g
        after, _ = constrained_logprobs(model, batch["input_ids"], batch["attention_mask"], ids, vocabulary)
    change = (after - before).sum(-1)
    torch.testing.assert_close(change, predicted, rtol=0.1, atol=1e-3)
    # The update raises the advantage-weighted log-likelihood, and favoured samples gain on disfavoured ones
    # (individual samples need not each move with their own sign: they share the prompt and the weights).
    assert (advantages * change).sum() > 0
    assert change[advantages > 0].mean() > 0 > change[advantages < 0].mean()
