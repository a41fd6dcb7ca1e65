"""Qwen2-VL / Qwen2.5-VL adapter.

Dynamic resolution: each image becomes a (t, h, w) grid of 14-px patches between the processor's
min and max pixels, so images in a batch have different token counts; pooling splits the vision
encoder's patch states by `image_grid_thw`. Features are the encoder's states before the patch
merger (the merger is Qwen's connector into the language model). The patches of an image come merge
block by merge block (the processor's order: t, h/m, w/m, m, m for merge size m); a gridRxC pooling puts
each back at its (row, column) and averages R x C regions of the h x w grid (Qwen2.5-VL's encoder returns
the blocks in its window-attention order, which the pooling undoes first). Positions are M-RoPE, computed by
the model from input_ids + image_grid_thw + mm_token_type_ids, so extending the prompt with a
caption only needs mm_token_type_ids extended with text (0) entries.
Default prompt as in the ViZer paper: system "You are a helpful assistant.", user: image +
"Describe this image in the shortest form."
"""

from __future__ import annotations

import torch

from .base import VLM, Pooling, grid_shape, region_means


class Qwen2VLM(VLM):
    family = "qwen2_vl"
    system = "You are a helpful assistant."
    default_prompt = "Describe this image in the shortest form."
    language_model_prefix = "model.language_model"  # LoRA goes inside this module only
    vision_keys = ("pixel_values",)
    image_count_key = "image_grid_thw"  # pixel_values holds the patches of all images: [sum_i t*h*w, C*patch^2]

    def prompt_texts(self, n: int, prompt: str | None) -> list[str]:
        # no text (None or ""): the user turn holds the image alone (models/prompts.py); the system turn stays
        user = [{"type": "image"}] + ([{"type": "text", "text": prompt}] if prompt else [])
        msgs = [{"role": "system", "content": [{"type": "text", "text": self.system}]}, {"role": "user", "content": user}]
        return [self.processor.apply_chat_template(msgs, add_generation_prompt=True)] * n

    def prompt_inputs(self, texts: list[str], replacements: list[str]) -> dict:
        out = super().prompt_inputs(texts, replacements)
        out["mm_token_type_ids"] = torch.tensor(self.processor.create_mm_token_type_ids(out["input_ids"].tolist()))  # 1 at image tokens
        return out

    def processor_images(self, images):
        return list(images)

    @property
    def vision_hidden_size(self) -> int:
        vc = self.model.config.vision_config
        return getattr(vc, "embed_dim", None) or vc.hidden_size  # Qwen2-VL: embed_dim; Qwen2.5-VL: hidden_size

    def vision_parameters(self):
        yield from self.model.model.visual.parameters()  # includes the merger (the connector)

    def run_vision(self, vision: dict, inputs: dict):
        return self.model.model.get_image_features(vision["pixel_values"], inputs["image_grid_thw"], return_dict=True)

    def vision_slice(self, vision: dict, inputs: dict, start: int, stop: int):
        # pixel_values holds the patches of all images, image after image: [sum_i t*h*w, C*patch^2]
        grid = inputs["image_grid_thw"]
        offsets = [0] + grid.prod(-1).cumsum(0).tolist()
        return {"pixel_values": vision["pixel_values"][offsets[start] : offsets[stop]]}, {"image_grid_thw": grid[start:stop]}

    def pool(self, mm, inputs: dict, how: Pooling) -> torch.Tensor:
        h = mm.last_hidden_state  # [sum_i t*h*w, D_v] patch states of all images, image after image
        grid_thw = inputs["image_grid_thw"]
        parts = h.split(grid_thw.prod(-1).tolist())
        grid = grid_shape(how)
        if grid:
            vc = self.model.config.vision_config
            m, out = vc.spatial_merge_size, []
            for k, (part, (_, hh, ww)) in enumerate(zip(parts, grid_thw.tolist())):
                if self.model.config.model_type == "qwen2_5_vl":  # its encoder returns the merge blocks in window order: undo it
                    from transformers.vision_utils import get_vision_window_index

                    order, _ = get_vision_window_index(grid_thw[k : k + 1], m, vc.window_size, vc.patch_size)
                    part = part.view(-1, m * m, part.shape[-1])[torch.argsort(order.to(part.device))].flatten(0, 1)
                out.append(region_means(part, *patch_positions(hh, ww, m, len(part), part.device), hh, ww, grid))
            return torch.stack(out)
        return torch.stack([p.amax(0) if how == "max" else p.mean(0) for p in parts])  # "global" == mean: one view per image

    def extend_inputs(self, inputs: dict, ids: torch.Tensor, mask: torch.Tensor) -> dict:
        kw = super().extend_inputs(inputs, ids, mask)
        kw["image_grid_thw"] = inputs["image_grid_thw"]
        if "mm_token_type_ids" in inputs:
            kw["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(ids, dtype=inputs["mm_token_type_ids"].dtype)], 1)
        return kw


def patch_positions(h: int, w: int, m: int, n: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, column) in the h x w patch grid of each of the n patches of one image (t frames of h*w patches), in
    the processor's order: frame, block row, block column (blocks of m x m), row in block, column in block."""
    k = torch.arange(n, device=device) % (h * w)
    block, inner = k // (m * m), k % (m * m)
    return (block // (w // m)) * m + inner // m, (block % (w // m)) * m + inner % m
