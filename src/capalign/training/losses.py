"""Every training loss of capalign, each written once (tests check them against TRL's code on the same inputs).

Inputs are sequence log-probabilities that the caller computes once (capalign.models.VLM.caption_logprobs
or the style trainer's one-vision-pass forward); the losses never see a model, so one implementation
serves every model family, the TRL-backed and the capalign-backed trainers, and the benchmarks.

- `sft_loss`: token-level negative log-likelihood of the chosen captions, averaged over all caption tokens
  of the batch (the convention of transformers' `labels=` loss and TRL's SFTTrainer).
- `dpo_loss`: DPO with the sigmoid loss (Rafailov et al. 2023): -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))
  on log-probabilities SUMMED over caption tokens, as in TRL's DPOTrainer (loss_type="sigmoid").
- `simpo_loss`: SimPO (Meng et al. 2024, arXiv 2405.14734, eq. 6): reference-free,
  -log sigmoid(beta * mean_c - beta * mean_r - gamma) with MEAN per-token log-probabilities (length
  normalised) and a target margin gamma; TRL's CPOTrainer(loss_type="simpo", cpo_alpha=0) computes the same.

Every pairwise loss returns per-pair losses [B] plus the implicit rewards, so callers log the usual DPO
metrics (reward accuracy and margin) without recomputing them.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class PairLoss(NamedTuple):
    losses: torch.Tensor  # [B] per-pair loss (the training loss is its mean)
    chosen_rewards: torch.Tensor  # [B] implicit reward of the chosen caption (detached)
    rejected_rewards: torch.Tensor  # [B] implicit reward of the rejected caption (detached)


def sft_loss(token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token NLL: token_logps [N, L] log p(token) of the target captions, mask [N, L] 1 on caption tokens."""
    m = mask.to(token_logps.dtype)
    return -(token_logps * m).sum() / m.sum().clamp(min=1)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
             beta: float = 0.1) -> PairLoss:
    """DPO sigmoid loss on summed sequence log-probabilities, all [B]."""
    chosen_logratios = policy_chosen - ref_chosen
    rejected_logratios = policy_rejected - ref_rejected
    losses = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios))
    return PairLoss(losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach())


def simpo_loss(chosen_mean: torch.Tensor, rejected_mean: torch.Tensor, beta: float = 2.0, gamma: float = 1.0) -> PairLoss:
    """SimPO on mean per-token log-probabilities [B] (no reference model); gamma is the target reward margin."""
    chosen_rewards, rejected_rewards = beta * chosen_mean, beta * rejected_mean
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards - gamma)
    return PairLoss(losses, chosen_rewards.detach(), rejected_rewards.detach())
