"""One interface over VLM families. Family differences (prompt format, vision inputs, pooling,
extra position inputs) live in the adapters (idefics3.py, qwen2_vl.py); everything here is generic.

The vision tower runs once per image: `encode()` returns an `Encoded` batch that holds the prompt
tokens and the tower's output, and both `generate()` and the training forwards (`caption_states`,
`caption_logprobs`) reuse it through transformers' `mm_encoder_outputs` argument, which
Idefics3 and Qwen2-VL accept in `forward` and `generate` alike. `encode_samples` gives each sample
its own prompt (e.g. a judge prompt holding that sample's caption) while the samples of one image
share that image's single vision pass.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from PIL import Image
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .. import CapalignError

Pooling = str  # mean, global, max, or gridRxC (e.g. grid1x3, grid2x2: the patch grid cut into R x C regions)


def grid_shape(pooling: str) -> tuple[int, int] | None:
    """(R, C) of a region pooling `gridRxC` (each region's mean patch state, concatenated row by row:
    features [B, R*C*D_v]), None for mean/global/max; an unknown name is an error."""
    if pooling in ("mean", "global", "max"):
        return None
    m = re.fullmatch(r"grid([1-9][0-9]?)x([1-9][0-9]?)", str(pooling))
    if m is None:
        raise CapalignError(f"unknown pooling {pooling!r}; expected mean, global, max or gridRxC (e.g. grid1x3, grid2x2)")
    return int(m[1]), int(m[2])


def region_means(states: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, height: int, width: int, grid: tuple[int, int]) -> torch.Tensor:
    """[P, D] patch states at patch (rows[k], cols[k]) of a height x width patch grid -> [R*C*D]: the mean state of
    each of R x C regions (region (i, j) holds the rows i*height//R .. and the columns j*width//C ..), row by row."""
    R, C = grid
    if height < R or width < C:
        raise CapalignError(f"pooling grid{R}x{C} needs at least {R}x{C} patches, the image has {height}x{width}")
    region = (rows * R // height) * C + cols * C // width  # [P]
    sums = torch.zeros(R * C, states.shape[-1], dtype=states.dtype, device=states.device).index_add_(0, region, states)
    counts = torch.bincount(region, minlength=R * C).clamp(min=1).to(states.dtype)
    return (sums / counts[:, None]).flatten()


@dataclass
class Encoded:
    """A batch of images encoded once: prompt tokens + vision-tower output + pooled features."""

    inputs: dict[str, torch.Tensor]  # prompt tokens, left padded: input_ids/attention_mask [B, T] + family extras
    mm: BaseModelOutputWithPooling  # vision tower output; pooler_output = per-sample LM image embeddings
    features: torch.Tensor  # [B, D_v] pooled vision-encoder features (frozen target for ViZer)

    def __len__(self) -> int:
        return self.inputs["input_ids"].shape[0]

    @property
    def mm_outputs(self) -> dict:
        # a fresh object each call: generate(num_return_sequences=n) expands it in place
        return {"image": BaseModelOutputWithPooling(pooler_output=list(self.mm.pooler_output))}


@dataclass
class Captions:
    """Generated (or tokenized) captions for a batch, right padded."""

    texts: list[str]
    ids: torch.Tensor  # [N, L] caption token ids (no prompt), pad after the end
    mask: torch.Tensor  # [N, L] 1 for tokens the model attends to (content + end-of-caption token)
    content: torch.Tensor = field(default=None)  # [N, L] 1 for content tokens only (what gets pooled)


def masked_mean(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """[N, L, D] x [N, L] weights -> [N, D]: the weighted mean over L (caption_states' pooling)."""
    return (h * w.unsqueeze(-1)).sum(1) / w.sum(1, keepdim=True).clamp(min=1)


class VLM:
    """A loaded VLM plus its processor. Subclasses implement the family-specific hooks below."""

    family: str = "?"
    default_prompt: str | None = None
    vision_keys: tuple[str, ...] = ("pixel_values",)  # processor outputs that only the vision tower reads
    language_model_prefix: str = "model.language_model"  # module path of the LM inside the model (LoRA target)
    image_count_key: str = "pixel_values"  # get_image_features argument whose first dim counts the images

    def __init__(self, model, processor, prompt: str | None = None, pooling: Pooling = "mean", states_layer: int = -1,
                 text_only: bool = False):
        self.model = model  # the transformers *ForConditionalGeneration (LoRA layers, if any, are injected in place)
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"  # batched generation appends to the right
        self.prompt = self.default_prompt if prompt is None else (prompt or None)
        grid_shape(pooling)  # an unknown pooling is an error here, not at the first batch
        self.pooling = pooling
        n_layers = model.config.get_text_config().num_hidden_layers
        if not isinstance(states_layer, int) or not -1 <= states_layer < n_layers:
            raise CapalignError(f"states_layer must be -1 (the last hidden state, the paper's) or 0..{n_layers - 1} "
                                f"(0: the token embeddings; k: the output of LM layer k), got {states_layer!r}")
        self.states_layer = states_layer  # which LM hidden state caption_states / caption_token_states read
        self.text_only = bool(text_only)  # their forward: the caption alone (no image, no prompt) instead of image + prompt + caption
        self.vision_batch_size: int | None = None  # images per vision-tower pass in encode(); None: 1 on CPU, else all
        gen_eos = model.generation_config.eos_token_id
        # keep the generation config's order: tokenize_captions ends references with eos_ids[0], which must be the
        # token the model ends its own captions with (Qwen2-VL-Instruct: [<|im_end|>, <|endoftext|>]; sorted ids
        # would pick <|endoftext|>)
        eos = (list(gen_eos) if isinstance(gen_eos, (list, tuple)) else [gen_eos]) + [self.tokenizer.eos_token_id]
        self.eos_ids = [i for i in dict.fromkeys(eos) if i is not None]
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_ids[0]
        # image/video placeholder tokens: a caption must never contain one (the next forward would count it as
        # an image slot and fail), which sampling from an untrained model can otherwise produce
        self.media_token_ids = [v for k in ("image_token_id", "video_token_id") if isinstance(v := getattr(model.config, k, None), int)]

    # ---- family hooks -------------------------------------------------------------------------
    def prompt_texts(self, n: int, prompt: str | None) -> list[str]:
        raise NotImplementedError

    def processor_images(self, images: list[Image.Image]) -> list:
        return [[im] for im in images]

    def pool(self, mm: BaseModelOutputWithPooling, inputs: dict, how: Pooling) -> torch.Tensor:
        """[B, D_v] from the vision encoder's last hidden state (before the connector)."""
        raise NotImplementedError

    def run_vision(self, vision: dict, inputs: dict) -> BaseModelOutputWithPooling:
        return self.model.model.get_image_features(**vision, return_dict=True)

    def vision_slice(self, vision: dict, inputs: dict, start: int, stop: int) -> tuple[dict, dict]:
        """The vision inputs (and the prompt inputs run_vision reads) of images start..stop-1."""
        return {k: v[start:stop] for k, v in vision.items()}, inputs

    def extend_inputs(self, inputs: dict, ids: torch.Tensor, mask: torch.Tensor) -> dict:
        """Prompt inputs + caption tokens -> forward kwargs (positions must match generation's)."""
        return {"input_ids": torch.cat([inputs["input_ids"], ids], 1), "attention_mask": torch.cat([inputs["attention_mask"], mask], 1)}

    def prompt_inputs(self, texts: list[str], replacements: list[str]) -> dict[str, torch.Tensor]:
        """Prompt texts with one image placeholder each -> left-padded prompt inputs, the placeholder of text k
        expanded to `replacements[k]` (the processor's expansion for that sample's image), as the processor
        would tokenize them with the images (tests check equality)."""
        expanded, _ = self.processor.get_text_with_replacements(list(texts), list(replacements))
        return dict(self.tokenizer(expanded, padding=True, return_tensors="pt"))

    # ---- generic ------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def text_hidden_size(self) -> int:
        return self.model.config.get_text_config().hidden_size

    @property
    def vision_hidden_size(self) -> int:
        return self.model.config.vision_config.hidden_size  # D_v of one patch state

    @property
    def feature_size(self) -> int:
        """Width of `Encoded.features`: D_v, or R*C*D_v for a gridRxC pooling (the regions' means concatenated)."""
        r, c = grid_shape(self.pooling) or (1, 1)
        return r * c * self.vision_hidden_size

    def vision_parameters(self):
        """Parameters of the vision tower and connector (frozen in every method of this package)."""
        raise NotImplementedError

    def run_vision_chunked(self, vision: dict, inputs: dict, n: int) -> BaseModelOutputWithPooling:
        """run_vision over `vision_batch_size` images at a time; by default one image per pass on CPU and
        the whole batch on accelerators.

        On CPU, one pass over many large images is slower per image than one pass per image (the
        attention activations leave the cache: 12% slower for 16 SmolVLM tiles of 512 px,
        benchmarks/caption_throughput.py), while the language model still gains from the whole batch.
        Outputs are concatenated image after image, exactly as one pass gives them.
        """
        size = self.vision_batch_size or (1 if self.device.type == "cpu" else n)
        if size >= n:
            return self.run_vision(vision, inputs)
        parts = [self.run_vision(*self.vision_slice(vision, inputs, i, min(i + size, n))) for i in range(0, n, size)]
        return BaseModelOutputWithPooling(
            last_hidden_state=torch.cat([p.last_hidden_state for p in parts]),
            pooler_output=[x for p in parts for x in p.pooler_output],
        )

    def encode(self, images: list[Image.Image], prompt: str | None = None, pooling: Pooling | None = None) -> Encoded:
        """Run the processor and the vision tower once; the result feeds generation and training."""
        if not images:
            raise CapalignError("encode() got an empty batch of images")
        texts = self.prompt_texts(len(images), self.prompt if prompt is None else prompt)
        return self._encode(images, texts, pooling)[0]

    def _encode(self, images: list[Image.Image], texts: list[str], pooling: Pooling | None, expansions: bool = False):
        """(Encoded, per-image placeholder expansions if asked): processor + vision tower, once per image."""
        kw = {"return_text_replacement_offsets": True} if expansions else {}
        batch = self.processor(text=texts, images=self.processor_images(images), return_tensors="pt", padding=True, **kw)
        offsets = batch.pop("text_replacement_offsets", None)  # per text: [{"replacement": expanded placeholder, ...}]
        batch = {k: v.to(self.device) for k, v in batch.items()}
        vision = {k: batch.pop(k) for k in self.vision_keys if k in batch}
        vision["pixel_values"] = vision["pixel_values"].to(self.model.dtype)
        with torch.no_grad():  # the vision tower is frozen everywhere in capalign
            mm = self.run_vision_chunked(vision, batch, len(images))
        mm.pooler_output = [p.detach() for p in mm.pooler_output]
        feats = self.pool(mm, {**batch, **vision}, pooling or self.pooling).float()
        mm.last_hidden_state = None  # pooled already; drop the big tensor
        return Encoded(inputs=batch, mm=mm, features=feats), ([o[0]["replacement"] for o in offsets] if expansions else None)

    def encode_samples(self, images: list[Image.Image], prompts: list[str | None], index: list[int], answer_prefix: str = "") -> Encoded:
        """Samples with their own prompts: sample k shows images[index[k]] under prompts[k] (None: the default).
        The processor and the vision tower run once per image; every sample of an image shares its vision
        output, and its prompt is tokenized with the same placeholder expansion the processor gave the image.
        `answer_prefix` is appended after the prompt template (the start of the model's answer, e.g. "Score:")."""
        if len(prompts) != len(index):
            raise CapalignError(f"encode_samples() got {len(prompts)} prompts for {len(index)} samples")
        if not images or any(not 0 <= i < len(images) for i in index):
            raise CapalignError(f"encode_samples(): sample image indices must lie in 0..{len(images) - 1}")
        enc, expansions = self._encode(images, self.prompt_texts(len(images), self.prompt), None, expansions=True)
        texts = [self.prompt_texts(1, self.prompt if p is None else p)[0] + answer_prefix for p in prompts]
        out = self.select(enc, list(index))  # per-sample vision outputs (shared tensors) and family extras
        out.inputs.update({k: v.to(self.device) for k, v in self.prompt_inputs(texts, [expansions[i] for i in index]).items()})
        return out

    def vision_features(self, images: list[Image.Image], pooling: Pooling | None = None) -> torch.Tensor:
        return self.encode(images, pooling=pooling).features

    @torch.no_grad()
    def generate(
        self,
        enc: Encoded,
        max_new_tokens: int = 32,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        num_return_sequences: int = 1,
        use_cache: bool = True,
    ) -> Captions:
        """Batched generation from encoded images; returns [B * num_return_sequences] captions."""
        if max_new_tokens <= 0:
            raise CapalignError(f"max_new_tokens must be > 0, got {max_new_tokens}")
        sample_kw = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) if do_sample else dict(do_sample=False)
        out = self.model.generate(
            **enc.inputs,
            mm_encoder_outputs=enc.mm_outputs,
            max_new_tokens=max_new_tokens,
            num_return_sequences=num_return_sequences,
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
            use_cache=use_cache,
            suppress_tokens=self.media_token_ids or None,
            **sample_kw,
        )
        new = out[:, enc.inputs["input_ids"].shape[1] :]  # [N, L]
        return self.captions_from_ids(new)

    def captions_from_ids(self, new: torch.Tensor) -> Captions:
        """Cut generated ids at the first end token: attend up to and including it, pool before it."""
        is_eos = torch.isin(new, torch.tensor(self.eos_ids, device=new.device))
        after = (is_eos.long().cumsum(1) - is_eos.long()) > 0  # strictly after the first eos
        mask = (~after).long()
        content = mask * (~is_eos).long()
        ids = new.masked_fill(after, self.pad_id)
        texts = [t.strip() for t in self.tokenizer.batch_decode(ids * content + self.pad_id * (1 - content), skip_special_tokens=True)]
        return Captions(texts=texts, ids=ids, mask=mask, content=content)

    def generate_captions(self, images: list[Image.Image], max_new_tokens: int = 32, **kw) -> list[str]:
        return self.generate(self.encode(images), max_new_tokens=max_new_tokens, **kw).texts

    def tokenize_captions(self, texts: list[str]) -> Captions:
        """Given captions -> ids ending with the end token (as the model would have produced them)."""
        eos = self.eos_ids[0]
        seqs = [self.tokenizer(t, add_special_tokens=False)["input_ids"] + [eos] for t in texts]
        L = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), L), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), L), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        content = mask.clone()
        content[torch.arange(len(seqs)), torch.tensor([len(s) - 1 for s in seqs])] = 0
        return Captions(texts=list(texts), ids=ids.to(self.device), mask=mask.to(self.device), content=content.to(self.device))

    def _forward(self, enc: Encoded, caps: Captions, layer: int = -1, image: bool = True) -> torch.Tensor:
        """A hidden state of the language model (no LM head) over prompt + caption: [N, T + L, D_t]; with `image`
        False over the caption's tokens alone: [N, L, D_t]. layer -1: the last (after the final norm); 0: the input
        embeddings; k: the output of decoder layer k."""
        if len(caps.ids) != len(enc):
            raise ValueError(f"{len(caps.ids)} captions for {len(enc)} encoded images; repeat the encoding first")
        if image:
            kw = {**self.extend_inputs(enc.inputs, caps.ids, caps.mask), "mm_encoder_outputs": enc.mm_outputs}
        else:
            kw = {"input_ids": caps.ids.to(self.device), "attention_mask": caps.mask.to(self.device)}
        out = self.model.model(**kw, use_cache=False, output_hidden_states=layer != -1)
        return out.last_hidden_state if layer == -1 else out.hidden_states[layer]

    def caption_token_states(self, enc: Encoded, caps: Captions) -> tuple[torch.Tensor, torch.Tensor]:
        """([N, L, D_t] hidden state (of `states_layer`, default the last) at each caption token, [N, L] weights: 1 at
        the tokens caption_states pools, the content tokens, or the end token of an empty caption); differentiable.
        The forward sees the image, the prompt and the caption (the paper), or with `text_only` the caption alone
        (states that carry what it says, none of the image)."""
        h = self._forward(enc, caps, self.states_layer, image=not self.text_only)
        if not self.text_only:
            h = h[:, enc.inputs["input_ids"].shape[1] :]  # [N, L, D_t]: the caption's positions
        w = caps.content if caps.content is not None else caps.mask
        return h, torch.where(w.sum(1, keepdim=True) > 0, w, caps.mask).to(h.dtype)  # empty caption: its end token

    def caption_states(self, enc: Encoded, caps: Captions) -> torch.Tensor:
        """[N, D_t] mean of the hidden state (`states_layer`) over the caption's content tokens; differentiable."""
        return masked_mean(*self.caption_token_states(enc, caps))

    def caption_logprobs(self, enc: Encoded, caps: Captions, normalize: bool = True) -> torch.Tensor:
        """[N] log p(caption | image, prompt), summed over caption tokens incl. the end token, or their mean."""
        T = enc.inputs["input_ids"].shape[1]
        h = self._forward(enc, caps)[:, T - 1 : -1]  # states that predict each caption token
        logits = self.model.lm_head(h).float()
        lp = torch.log_softmax(logits, -1).gather(-1, caps.ids.unsqueeze(-1)).squeeze(-1) * caps.mask
        total = lp.sum(1)
        return total / caps.mask.sum(1).clamp(min=1) if normalize else total

    def next_token_logits(self, enc: Encoded) -> torch.Tensor:
        """[N, V] logits of the token that follows each prompt (e.g. a judge's answer letter)."""
        empty = enc.inputs["input_ids"][:, :0]
        h = self._forward(enc, Captions(texts=[""] * len(enc), ids=empty, mask=empty))[:, -1]  # [N, D_t]
        return self.model.lm_head(h).float()

    def repeat(self, enc: Encoded, n: int) -> Encoded:
        """Each sample n times (e.g. to score n sampled captions per image) without re-running vision."""
        return enc if n == 1 else self.select(enc, [i for i in range(len(enc)) for _ in range(n)])

    def select(self, enc: Encoded, index: list[int]) -> Encoded:
        """Samples `index` of an encoded batch, in that order and with repeats, without re-running vision
        (e.g. a different number of captions to score per image)."""
        idx = torch.tensor(index, dtype=torch.long, device=enc.features.device)
        inputs = {k: v[idx.to(v.device)] for k, v in enc.inputs.items()}  # every prompt input is per sample: [B, ...]
        mm = BaseModelOutputWithPooling(pooler_output=[enc.mm.pooler_output[i] for i in index])
        return Encoded(inputs=inputs, mm=mm, features=enc.features[idx])
