"""The paper's "simplified GRPO" on visual tokens: group advantages, k3 KL, the loss, and constrained log-probs.

For a prompt, G images ``o_1 .. o_G`` (K visual tokens each) are sampled from the policy and scored with
rewards ``r_1 .. r_G``. The reward arrives at the last token only and nothing is discounted, so the return
seen from every token of ``o_i`` is ``r_i`` and its advantage is the group-normalised reward

    A_i = (r_i - mean(r)) / (std(r) + eps)            (std with Bessel's correction, as trl and DeepSeekMath)

for *every* token of ``o_i``. The loss, averaged over the K tokens and the G * B sequences, is

    L = - A_i * log pi(o_i,k | prefix) + beta * KL_k3(pi || pi_ref)

    KL_k3 = exp(log pi_ref - log pi) - (log pi_ref - log pi) - 1     (Schulman's k3: unbiased, >= 0)

with no importance ratio and no clipping: each rollout batch is used for exactly one update, so the ratio
pi / pi_old would be 1 (with the gradient of log pi), and the loss above has that same gradient.

**Which policy the KL is against.** The paper writes KL(pi || pi_old). If ``pi_old`` were the policy that
just sampled the batch, the k3 term and its gradient would be exactly 0 at the single update
(``d KL_k3 / d log pi = 1 - exp(log pi_ref - log pi) = 0`` when ``pi = pi_ref``; a test checks this), so the
term could not stabilise anything, while the paper reports beta = 0 unstable. The trainer therefore keeps
a separate reference: the initial (SFT) policy by default, as in DeepSeekMath's GRPO, or a copy refreshed
every N steps (``reference_sync_steps``), which interpolates towards the literal reading.

**Support.** Log-probabilities are those of the *constrained* policy: the logits are masked with
:func:`selftok_hf.visual_vocabulary.mask_logits`, the same grammar that
:func:`~selftok_hf.generation_selftok.generate_image_tokens` samples with, before the (temperature-scaled)
log-softmax. So sampling, log pi and the KL are over one support.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..visual_vocabulary import VisualVocabulary, mask_logits

__all__ = ["GRPOLossOutput", "constrained_log_distributions", "constrained_logprobs", "group_advantages", "grpo_loss", "k3_kl"]


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """Group-normalised advantages.

    Args:
        rewards (`torch.Tensor` of shape `(B * G,)`): rewards, grouped: rows ``[g * G, (g + 1) * G)`` are the G
            samples of prompt g.
        group_size: G (>= 2; the standard deviation of one sample is undefined).
        eps: added to the standard deviation (a group whose rewards are all equal gets advantages 0).
    Returns:
        `torch.Tensor` of shape `(B * G,)`: ``(r - mean_group) / (std_group + eps)``, float32.
    """
    if rewards.ndim != 1:
        raise ValueError(f"rewards must be 1-D (B * G,), got shape {tuple(rewards.shape)}")
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2, got {group_size}")
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    grouped = rewards.float().view(-1, group_size)
    advantages = (grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + eps)
    return advantages.view(-1)


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi || pi_ref) from the log-probs of tokens sampled from pi:
    ``exp(ref - logp) - (ref - logp) - 1`` (same shape as the inputs, >= 0)."""
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(f"logprobs {tuple(logprobs.shape)} and ref_logprobs {tuple(ref_logprobs.shape)} differ in shape")
    log_ratio = ref_logprobs - logprobs
    return torch.exp(log_ratio) - log_ratio - 1


@dataclass
class GRPOLossOutput:
    """``loss`` (scalar, differentiable), ``policy_loss`` (the -A log pi part) and ``kl`` (mean k3), both detached."""

    loss: torch.Tensor
    policy_loss: torch.Tensor
    kl: torch.Tensor


def grpo_loss(
    logprobs: torch.Tensor,
    advantages: torch.Tensor,
    ref_logprobs: torch.Tensor | None = None,
    beta: float = 0.04,
) -> GRPOLossOutput:
    """The simplified GRPO loss (see the module docstring).

    Args:
        logprobs (`torch.Tensor` of shape `(N, K)`): log pi of the sampled visual tokens (with gradient).
        advantages (`torch.Tensor` of shape `(N,)`): one advantage per sequence, used for all its tokens.
        ref_logprobs (`torch.Tensor` of shape `(N, K)`, *optional*): log pi_ref of the same tokens; needed when beta > 0.
        beta: weight of the k3 KL term (paper: 0.04).
    Returns:
        [`GRPOLossOutput`]; ``loss = mean_{n,k}(-A_n logprobs[n, k] + beta * k3[n, k])``.
    """
    if logprobs.ndim != 2:
        raise ValueError(f"logprobs must have shape (N, K), got {tuple(logprobs.shape)}")
    if advantages.shape != logprobs.shape[:1]:
        raise ValueError(f"advantages must have shape ({logprobs.shape[0]},), got {tuple(advantages.shape)}")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    policy_loss = -(advantages.to(logprobs.dtype).unsqueeze(1) * logprobs).mean()
    if beta > 0:
        if ref_logprobs is None:
            raise ValueError("beta > 0 needs ref_logprobs")
        kl = k3_kl(logprobs, ref_logprobs.detach()).mean()
        loss = policy_loss + beta * kl
    else:
        kl = k3_kl(logprobs, ref_logprobs).mean() if ref_logprobs is not None else torch.zeros((), device=logprobs.device)
        loss = policy_loss
    return GRPOLossOutput(loss=loss, policy_loss=policy_loss.detach(), kl=kl.detach())


def constrained_log_distributions(
    model,
    prompt_ids: torch.LongTensor,
    prompt_attention_mask: torch.LongTensor,
    image_token_ids: torch.LongTensor,
    vocabulary: VisualVocabulary,
    temperature: float = 1.0,
) -> torch.Tensor:
    """The constrained policy's next-token log-distributions at the K visual steps, in one teacher-forced pass.

    Args:
        model: the causal LM.
        prompt_ids (`torch.LongTensor` of shape `(N, P)`): left-padded prompts ending with begin-of-image (what
            :func:`~selftok_hf.generation_selftok.generate_image_tokens` was given).
        prompt_attention_mask (`torch.LongTensor` of shape `(N, P)`).
        image_token_ids (`torch.LongTensor` of shape `(N, K)`): the sampled codebook ids (AR order).
        vocabulary: the LM's :class:`VisualVocabulary`.
        temperature: the sampling temperature (logits are divided by it after masking, as the sampler does).
    Returns:
        `torch.Tensor` of shape `(N, K, V)`, float32: ``[n, k]`` is log pi(. | prompt, first k tokens), -inf off the
        grammar's support.
    """
    if prompt_ids.ndim != 2 or prompt_attention_mask.shape != prompt_ids.shape:
        raise ValueError(f"prompt_ids and prompt_attention_mask must both be (N, P), got {tuple(prompt_ids.shape)} and {tuple(prompt_attention_mask.shape)}")
    if image_token_ids.ndim != 2 or image_token_ids.shape != (prompt_ids.shape[0], vocabulary.num_image_tokens):
        raise ValueError(f"image_token_ids must have shape ({prompt_ids.shape[0]}, {vocabulary.num_image_tokens}), got {tuple(image_token_ids.shape)}")
    if not bool((prompt_ids[:, -1] == vocabulary.boi_token_id).all()):
        raise ValueError("every prompt must end with the begin-of-image token (as for generation)")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    visual = vocabulary.to_lm_ids(image_token_ids.to(prompt_ids.device))
    input_ids = torch.cat([prompt_ids, visual], dim=1)
    attention_mask = torch.cat([prompt_attention_mask, prompt_attention_mask.new_ones(visual.shape)], dim=1).long()
    position_ids = (attention_mask.cumsum(-1) - 1).clamp_min(0)  # as the sampler numbers left-padded rows
    K, P = vocabulary.num_image_tokens, prompt_ids.shape[1]
    # Only the logits of positions P - 1 .. P + K - 2 (begin-of-image and the first K - 1 visual tokens) score
    # the K visual tokens. The grammar state there depends only on the span opened at P - 1, so masking
    # with that slice of the ids is exact.
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, logits_to_keep=K + 1).logits[:, :-1]
    logits = mask_logits(logits.float(), input_ids[:, P - 1 : P - 1 + K], vocabulary) / temperature
    return torch.log_softmax(logits, dim=-1)


def constrained_logprobs(
    model,
    prompt_ids: torch.LongTensor,
    prompt_attention_mask: torch.LongTensor,
    image_token_ids: torch.LongTensor,
    vocabulary: VisualVocabulary,
    temperature: float = 1.0,
    return_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log pi of each sampled visual token under the grammar-constrained policy (arguments as
    :func:`constrained_log_distributions`).

    Returns:
        ``(logprobs, entropy)``: `(N, K)` float32 log-probs of the sampled tokens, and with ``return_entropy`` the
        `(N, K)` entropies of the constrained next-token distributions (else None).
    """
    log_probs = constrained_log_distributions(model, prompt_ids, prompt_attention_mask, image_token_ids, vocabulary, temperature)
    visual = vocabulary.to_lm_ids(image_token_ids.to(log_probs.device))
    token_logprobs = log_probs.gather(-1, visual.unsqueeze(-1)).squeeze(-1)
    entropy = None
    if return_entropy:
        # 0 * log 0 = 0 for the masked tokens.
        entropy = -(log_probs.exp() * log_probs.masked_fill(torch.isinf(log_probs), 0.0)).sum(-1)
    return token_logprobs, entropy
