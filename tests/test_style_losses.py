"""capalign's losses against TRL 1.16's own code, called on the same log-probabilities.

DPO sigmoid and SFT (token NLL): `DPOTrainer._compute_loss` (loss_type "sigmoid" / "sft") on a stand-in
model whose fused-LM-head output carries the per-token log-probs, with precomputed reference log-probs.
SimPO: `trl.experimental.cpo.CPOTrainer.cpo_loss` (loss_type "simpo") on mean per-token log-probs.
Gradients with respect to the log-probs are compared too.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from capalign.training import losses


class _Acc:
    device = torch.device("cpu")

    def gather_for_metrics(self, x):
        return x

    gather = gather_for_metrics

    def unwrap_model(self, m):
        return m


def _per_token(B: int, T: int, seed: int):
    """Chosen/rejected per-token log-probs [2B, T-1] with completions of different lengths, zero elsewhere."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(2 * B, T, dtype=torch.long)
    for i in range(2 * B):
        start = int(torch.randint(2, 5, (1,), generator=g))
        length = int(torch.randint(1, T - start, (1,), generator=g))
        mask[i, start : start + length] = 1  # completion tokens (the prompt before, padding after)
    lp = (-torch.rand(2 * B, T - 1, generator=g) * 4) * mask[:, 1:]  # log p of token t+1 at position t
    return lp, mask


def _trl_dpo(loss_type: str, lp: torch.Tensor, mask: torch.Tensor, ref_c, ref_r, beta: float) -> torch.Tensor:
    from trl.trainer.dpo_trainer import DPOTrainer
    from trl.trainer.utils import FusedCausalLMOutput

    class Model(torch.nn.Module):  # returns the given log-probs as TRL's fused LM head would
        training = True

        def forward(self, **kw):
            return FusedCausalLMOutput(log_probs=lp, entropy=torch.zeros_like(lp), mean_logits=torch.zeros_like(lp),
                                       is_top1=torch.zeros_like(lp, dtype=torch.bool))

    model = Model()
    me = SimpleNamespace(model=model, accelerator=_Acc(), aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True,
                         f_divergence_type="reverse_kl", loss_types=[loss_type], loss_weights=[1.0], beta=beta, use_weighting=False,
                         label_smoothing=0.0, _metrics={"train": defaultdict(list)}, _total_train_tokens=0, _tp_size=1)
    inputs = {"input_ids": torch.ones_like(mask), "attention_mask": torch.ones_like(mask), "completion_mask": mask,
              "ref_chosen_logps": ref_c, "ref_rejected_logps": ref_r}
    return DPOTrainer._compute_loss(me, model, inputs, return_outputs=False)


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_sigmoid_matches_trl(beta):
    B, T = 6, 12
    lp, mask = _per_token(B, T, seed=1)
    lp.requires_grad_(True)
    ref = -torch.rand(2 * B, generator=torch.Generator().manual_seed(2)) * 20
    trl_loss = _trl_dpo("sigmoid", lp, mask, ref[:B], ref[B:], beta)
    (g_trl,) = torch.autograd.grad(trl_loss, lp)
    total = lp.sum(1)  # TRL's batch is [chosen..., rejected...]
    ours = losses.dpo_loss(total[:B], total[B:], ref[:B], ref[B:], beta)
    (g_ours,) = torch.autograd.grad(ours.losses.mean(), lp)
    assert abs(trl_loss.item() - ours.losses.mean().item()) < 1e-6
    assert torch.allclose(g_trl, g_ours, atol=1e-7)
    assert trl_loss.item() != pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-3)  # not the trivial value


def test_sft_token_nll_matches_trl():
    B, T = 5, 10
    lp, mask = _per_token(B, T, seed=3)
    lp.requires_grad_(True)
    zeros = torch.zeros(B)
    trl_loss = _trl_dpo("sft", lp, mask, zeros, zeros, 0.1)  # TRL: mean NLL over the chosen completions' tokens
    ours = losses.sft_loss(lp[:B], mask[:B, 1:])
    assert abs(trl_loss.item() - ours.item()) < 1e-6
    (g_trl,) = torch.autograd.grad(trl_loss, lp)
    (g_ours,) = torch.autograd.grad(ours, lp)
    assert torch.allclose(g_trl, g_ours, atol=1e-7)


@pytest.mark.parametrize("beta,gamma", [(2.0, 1.0), (0.1, 0.5), (2.5, 1.6)])
def test_simpo_matches_trl_cpo(beta, gamma):
    from trl.experimental.cpo.cpo_trainer import CPOTrainer

    g = torch.Generator().manual_seed(4)
    c, r = (-torch.rand(7, generator=g) * 3).requires_grad_(True), (-torch.rand(7, generator=g) * 3).requires_grad_(True)
    me = SimpleNamespace(alpha=0.0, beta=beta, loss_type="simpo", simpo_gamma=gamma, label_smoothing=0.0, accelerator=_Acc())
    trl_losses, trl_cr, trl_rr = CPOTrainer.cpo_loss(me, c, r)
    ours = losses.simpo_loss(c, r, beta, gamma)
    assert torch.allclose(trl_losses, ours.losses, atol=1e-6)
    assert torch.allclose(trl_cr, ours.chosen_rewards) and torch.allclose(trl_rr, ours.rejected_rewards)
    ga = torch.autograd.grad(trl_losses.mean(), (c, r))
    gb = torch.autograd.grad(ours.losses.mean(), (c, r))
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(ga, gb))


def test_losses_by_hand():
    # DPO: beta * ((-1 - -2) - (-3 - -1)) = 0.1 * 3 -> -log sigmoid(0.3)
    d = losses.dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-1.0]), 0.1)
    assert d.losses.item() == pytest.approx(-torch.nn.functional.logsigmoid(torch.tensor(0.3)).item())
    # SimPO: 2 * (-0.5) - 2 * (-1.5) - 1 = 1 -> -log sigmoid(1)
    s = losses.simpo_loss(torch.tensor([-0.5]), torch.tensor([-1.5]), 2.0, 1.0)
    assert s.losses.item() == pytest.approx(0.31326169, abs=1e-6)
    # SFT: tokens -1, -2 | -3 (padding ignored) -> mean NLL 2
    assert losses.sft_loss(torch.tensor([[-1.0, -2.0], [-3.0, -9.0]]), torch.tensor([[1, 1], [1, 0]])).item() == pytest.approx(2.0)
