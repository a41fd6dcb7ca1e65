"""The ViZer mapper h: language-model hidden states -> vision-encoder feature space.

`M = h(f(.))` with f the VLM's language model (pooled last hidden states over caption tokens, see
VLM.caption_states) and h an MLP of depth 2 (Linear -> GELU -> Linear) of width w. The paper gives
depth and widths (128-1024, best 256) but not the activation; GELU is our choice. Trained with
`1 - cos(F_I - c, h(F_T))`, where c (buffer `feature_mean`) is zero as in the paper, or, with
centering on, the mean training feature: mean-pooled patch features of one model share a large
common component (cosines between different images ~0.99), which leaves the paper's raw cosine
almost no signal to fit (docs/vizer.md has the measurements). Saved with huggingface_hub's PyTorchModelHubMixin: safetensors + config.json,
`Mapper.from_pretrained(path)`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn


class Mapper(nn.Module, PyTorchModelHubMixin, library_name="capalign", tags=["vizer-mapper"]):
    def __init__(self, in_dim: int, out_dim: int, width: int = 256, depth: int = 2):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        dims = [in_dim] + [width] * (depth - 1) + [out_dim]
        layers: list[nn.Module] = []
        for i in range(depth):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < depth - 1:
                layers.append(nn.GELU())
        self.net = nn.Sequential(*layers)
        self.register_buffer("feature_mean", torch.zeros(out_dim))  # c; zero = the paper's raw cosine

    def target(self, features: torch.Tensor) -> torch.Tensor:
        """What h's output is compared with: F_I - c. [B, D_v]"""
        return features.float() - self.feature_mean

    def forward(self, states: torch.Tensor) -> torch.Tensor:  # [B, D_t] -> [B, D_v]
        return self.net(states)


def cosine_loss(features: torch.Tensor, mapped: torch.Tensor) -> torch.Tensor:
    """ViZer's loss: mean over the batch of 1 - cos(F_I, M(x)). [B, D_v] x [B, D_v] -> scalar."""
    return (1 - F.cosine_similarity(features.float(), mapped.float(), dim=-1)).mean()
