"""Idefics3 / SmolVLM adapter.

SmolVLM's processor splits a large image into tiles plus a downscaled global image, so one image is
several sub-images: `pool` averages the SigLIP patch states of all of an image's sub-images (only
real patches, by the same pixel_attention_mask rule the model uses), or only the global one; a
gridRxC pooling cuts the global image's patch grid (its real patches) into R x C regions.
SmolVLM-Base takes no text prompt (the image alone); a prompt, if given, goes through the
processor's chat template when it has one (Instruct checkpoints), else follows the image tokens. No
text (None or "") is the image tokens alone in either case.
"""

from __future__ import annotations

import torch

from .base import VLM, Pooling, grid_shape, region_means


class Idefics3VLM(VLM):
    family = "idefics3"
    default_prompt = None
    language_model_prefix = "model.text_model"  # LoRA goes inside this module only
    vision_keys = ("pixel_values", "pixel_attention_mask")

    def prompt_texts(self, n: int, prompt: str | None) -> list[str]:
        if not prompt:  # None and "": no text, the image tokens alone (models/prompts.py), chat template or not
            text = "<image>"
        elif getattr(self.processor, "chat_template", None):
            msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
            text = self.processor.apply_chat_template(msgs, add_generation_prompt=True)
        else:
            text = "<image>" + prompt
        return [text] * n

    def vision_parameters(self):
        yield from self.model.model.vision_model.parameters()
        yield from self.model.model.connector.parameters()

    def pool(self, mm, inputs: dict, how: Pooling) -> torch.Tensor:
        h = mm.last_hidden_state  # [S, P, D_v]: all real sub-images of the batch, in order
        pv, pam = inputs["pixel_values"], inputs["pixel_attention_mask"]  # [B, N, 3, H, W], [B, N, H, W]
        B, N = pv.shape[:2]
        real = (pv.flatten(2) != 0).any(-1)  # [B, N]: padding sub-images are all zero (as in the model)
        p = self.model.config.vision_config.patch_size
        pm = pam[real].unfold(1, p, p).unfold(2, p, p).sum((-1, -2)) > 0  # [S, H/p, W/p]
        grid, wp = grid_shape(how), pm.shape[-1]
        pm = pm.flatten(1).to(h.dtype)  # [S, P], patches row by row
        counts = real.sum(1).tolist()
        out = []
        for hs, ms in zip(h.split(counts), pm.split(counts)):  # per image: [n_sub, P, D], [n_sub, P]
            if grid:  # the global image (last): its real patches (padding is below and right of them) in R x C regions
                (k,) = ms[-1].nonzero(as_tuple=True)
                rows, cols = k // wp, k % wp
                out.append(region_means(hs[-1][k], rows, cols, int(rows.max()) + 1, int(cols.max()) + 1, grid))
                continue
            if how == "global":  # the processor puts the global image last
                hs, ms = hs[-1:], ms[-1:]
            if how == "max":
                out.append(hs.masked_fill(ms.unsqueeze(-1) == 0, float("-inf")).amax((0, 1)))
            else:
                out.append((hs * ms.unsqueeze(-1)).sum((0, 1)) / ms.sum())
        return torch.stack(out)

    def extend_inputs(self, inputs: dict, ids: torch.Tensor, mask: torch.Tensor) -> dict:
        kw = super().extend_inputs(inputs, ids, mask)
        # generate() derives positions from the attention mask (left padding); do the same here
        kw["position_ids"] = (kw["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        return kw
