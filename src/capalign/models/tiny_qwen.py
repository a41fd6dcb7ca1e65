"""Tiny random Qwen2-VL / Qwen2.5-VL checkpoints, built offline in a few seconds.

Used by tests and benchmarks.  ``build_tiny_qwen2_vl(out_dir)`` writes a randomly initialised
``Qwen2VLForConditionalGeneration`` plus a real ``Qwen2VLProcessor`` (real Qwen2-VL image
processor with a small pixel budget so differently sized images get different dynamic
resolutions, a locally trained byte-level BPE tokenizer with Qwen2-VL's special tokens, and the
Qwen2-VL-Instruct chat template) via ``save_pretrained``.  Load the processor back with
:func:`capalign.models.compat.load_processor` (works with or without torchvision).

:func:`build_bpe_tokenizer` is shared with the Idefics3 tiny builder.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "QWEN2_VL_CHAT_TEMPLATE",
    "QWEN2_VL_SPECIAL_TOKENS",
    "build_bpe_tokenizer",
    "build_qwen2_vl_tokenizer",
    "build_tiny_qwen2_5_vl",
    "build_tiny_qwen2_vl",
]

#: Qwen2-VL special tokens, in the order of the real vocabulary (ids 151643.. in the real model).
QWEN2_VL_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

#: Chat template of Qwen/Qwen2-VL-*-Instruct (chat_template.json), verbatim.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_BASE_CORPUS = [
    "A photo of a dog running on the beach near the water.",
    "Two people are sitting at a wooden table in a small cafe.",
    "A red car is parked on the side of a quiet street at night.",
    "The image shows a cat sleeping on a blue sofa next to a window.",
    "A man in a black jacket is riding a bicycle through the park.",
    "A plate of food with rice, vegetables and a piece of grilled fish.",
    "Describe the image in one sentence. What is in this picture?",
    "There is a large green tree in front of a white house with a red roof.",
    "A group of children playing football on a grass field under a cloudy sky.",
    "A close-up of a yellow flower with a bee collecting pollen.",
    "The kitchen has white cabinets, a steel sink and a bowl of apples.",
    "An airplane is flying over the mountains covered with snow.",
    "A woman holding an umbrella walks across the street in the rain.",
    "The train is arriving at the station while passengers wait on the platform.",
    "You are a helpful assistant. Please write a short caption for the image.",
    "A bird is standing on a rock in the middle of a river.",
    "Several boats are floating in the harbor at sunset.",
    "A brown horse is eating grass in a field surrounded by a fence.",
    "The city skyline with tall buildings and lights reflected in the lake.",
    "A laptop, a cup of coffee and a notebook on a desk.",
]


def _corpus(extra: Iterable[str]) -> list[str]:
    words = sorted({w.strip(".,?!").lower() for s in _BASE_CORPUS for w in s.split()})
    # Deterministic recombinations so the trainer sees enough pair statistics for ~1000 merges.
    combos = [" ".join(words[(i * 7 + k * 13) % len(words)] for k in range(12)) for i in range(len(words) * 4)]
    return list(_BASE_CORPUS) * 8 + combos + [s.upper() for s in _BASE_CORPUS] + list(extra)


def build_bpe_tokenizer(
    special_tokens: Sequence[str],
    extra_corpus: Iterable[str] = (),
    vocab_size: int = 1000,
    **kw: Any,
):
    """Train a small byte-level BPE tokenizer offline and wrap it in ``PreTrainedTokenizerFast``.

    Byte-level, so any text (any unicode) encodes without unknown tokens.  ``special_tokens`` get
    the first ids in the given order and are registered as special (never split, skipped by
    ``decode(skip_special_tokens=True)``).  ``**kw`` go to ``PreTrainedTokenizerFast`` (e.g.
    ``eos_token=``, ``pad_token=``, ``bos_token=``, ``padding_side=``, ``chat_template=``,
    ``model_max_length=``).  Deterministic for a given input.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special_tokens = list(dict.fromkeys(special_tokens))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(extra_corpus), trainer=trainer)
    kw.setdefault("model_max_length", 32768)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **kw)
    # Make sure every special token is flagged special in the transformers wrapper as well.
    missing = [t for t in special_tokens if t not in fast.all_special_tokens]
    if missing:
        fast.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)
    return fast


def build_qwen2_vl_tokenizer(vocab_size: int = 1000, extra_corpus: Iterable[str] = ()):
    """BPE tokenizer with Qwen2-VL's special tokens and chat template (pad=<|endoftext|>, eos=<|im_end|>)."""
    return build_bpe_tokenizer(
        QWEN2_VL_SPECIAL_TOKENS,
        extra_corpus=extra_corpus,
        vocab_size=vocab_size,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )


def _build(
    out_dir: str | os.PathLike,
    *,
    variant: str,
    seed: int = 0,
    min_pixels: int = 28 * 28 * 4,
    max_pixels: int = 28 * 28 * 64,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    vision_depth: int = 2,
    vision_embed_dim: int = 32,
    vision_heads: int = 2,
    vocab_size: int = 1000,
    patch_size: int = 14,
    merge_size: int = 2,
    temporal_patch_size: int = 2,
) -> Path:
    import torch
    import transformers

    from capalign.models.compat import make_qwen_vl_processor, qwen_vl_image_processor, qwen_vl_video_processor

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = build_qwen2_vl_tokenizer(vocab_size=vocab_size)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN2_VL_SPECIAL_TOKENS}

    head_dim = hidden_size // num_heads
    if head_dim % 2 or hidden_size % num_heads:
        raise ValueError("hidden_size must be divisible by num_heads with an even head_dim")
    half = head_dim // 2  # mrope_section must sum to head_dim / 2 (t, h, w)
    mrope_section = [half - 2 * (half // 3), half // 3, half // 3]

    text_config = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": mrope_section},
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    common = dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=False,
    )
    if variant == "qwen2_vl":
        vision_config = dict(
            depth=vision_depth,
            embed_dim=vision_embed_dim,
            hidden_size=hidden_size,  # Qwen2-VL: merger output size == text hidden size
            mlp_ratio=2,
            num_heads=vision_heads,
            patch_size=patch_size,
            spatial_merge_size=merge_size,
            temporal_patch_size=temporal_patch_size,
        )
        config = transformers.Qwen2VLConfig(text_config=text_config, vision_config=vision_config, **common)
        model_cls = transformers.Qwen2VLForConditionalGeneration
        processor_cls = "Qwen2VLProcessor"
    elif variant == "qwen2_5_vl":
        vision_config = dict(
            depth=vision_depth,
            hidden_size=vision_embed_dim,
            intermediate_size=2 * vision_embed_dim,
            out_hidden_size=hidden_size,  # merger output size == text hidden size
            num_heads=vision_heads,
            patch_size=patch_size,
            spatial_merge_size=merge_size,
            temporal_patch_size=temporal_patch_size,
            window_size=2 * patch_size * merge_size,
            fullatt_block_indexes=[vision_depth - 1],
        )
        config = transformers.Qwen2_5_VLConfig(text_config=text_config, vision_config=vision_config, **common)
        model_cls = transformers.Qwen2_5_VLForConditionalGeneration
        processor_cls = "Qwen2_5_VLProcessor"
    else:  # pragma: no cover
        raise ValueError(variant)

    torch.manual_seed(seed)
    model = model_cls(config).eval()
    # Explicit generation defaults: greedy, stop on <|im_end|>, pad with <|endoftext|>.
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.bos_token_id = ids["<|endoftext|>"]
    model.generation_config.do_sample = False
    model.save_pretrained(out)

    image_processor = qwen_vl_image_processor(
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        patch_size=patch_size,
        merge_size=merge_size,
        temporal_patch_size=temporal_patch_size,
    )
    video_processor = qwen_vl_video_processor(
        size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
        patch_size=patch_size,
        merge_size=merge_size,
        temporal_patch_size=temporal_patch_size,
    )
    processor = make_qwen_vl_processor(
        image_processor,
        tokenizer,
        video_processor,
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
        processor_cls=processor_cls,
    )
    processor.save_pretrained(out)
    return out


def build_tiny_qwen2_vl(out_dir: str | os.PathLike, **kw: Any) -> Path:
    """Save a tiny random ``Qwen2VLForConditionalGeneration`` + ``Qwen2VLProcessor`` into ``out_dir``.

    Offline and deterministic for a given ``seed``; sizes are the keyword defaults of ``_build``
    (hidden 64, 2 layers, 14-px patches, min/max pixels 28*28*4 .. 28*28*64). Returns ``Path(out_dir)``.
    """
    return _build(out_dir, variant="qwen2_vl", **kw)


def build_tiny_qwen2_5_vl(out_dir: str | os.PathLike, **kw: Any) -> Path:
    """Qwen2.5-VL counterpart of :func:`build_tiny_qwen2_vl` (``Qwen2_5_VLForConditionalGeneration`` +
    ``Qwen2_5_VLProcessor``; windowed vision attention with the last block full-attention)."""
    return _build(out_dir, variant="qwen2_5_vl", **kw)