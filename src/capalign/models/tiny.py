"""Tiny random Idefics3 (SmolVLM) models with a locally built processor, saved like a hub checkpoint.

Used by the tests, the benchmarks and the nano captioner: `load_vlm(path)` loads the result through
exactly the code path a real SmolVLM checkpoint takes. The processor keeps SmolVLM's behaviour
(large images are split into tiles plus a global image; <row_i_col_j> tags; <image> tokens).
"""

from __future__ import annotations

from pathlib import Path

import torch

IDEFICS3_SPECIALS = (
    ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<fake_token_around_image>", "<image>", "<global-img>", "<end_of_utterance>"]
    + [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
)

# SmolVLM-256M's shapes (HuggingFaceTB/SmolVLM-256M-Base config.json): SigLIP-B/16 at 512 px,
# 12 vision layers; a 30-layer, 576-wide Llama; pixel shuffle x4 -> 64 image tokens per tile.
SMOLVLM_256M = dict(
    vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=512, patch_size=16),
    text=dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, rope_theta=100000.0, max_position_embeddings=8192),
    scale_factor=4,
    vocab_size=49280,
)

# A few seconds to build and run: what the tests use.
TINY = dict(
    vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8),
    text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024),
    scale_factor=2,
)

def build_tokenizer(specials: list[str], corpus: list[str] = (), vocab_size: int = 600, eos: str = "<end_of_utterance>", pad: str = "<|endoftext|>"):
    """SmolVLM-style special tokens on a small byte-level BPE (see tiny_qwen.build_bpe_tokenizer)."""
    from .tiny_qwen import build_bpe_tokenizer

    return build_bpe_tokenizer(specials, corpus, vocab_size=vocab_size, eos_token=eos, pad_token=pad)


def idefics3_processor(tokenizer, image_size: int, patch_size: int, scale_factor: int, longest_edge: int, splitting: bool = True):
    from transformers import Idefics3ImageProcessorPil, Idefics3Processor

    ip = Idefics3ImageProcessorPil(do_image_splitting=splitting, size={"longest_edge": longest_edge}, max_image_size={"longest_edge": image_size})
    seq = (image_size // patch_size) ** 2 // scale_factor**2
    return Idefics3Processor(ip, tokenizer, image_seq_len=seq)


def build_idefics3(
    out_dir: str | Path,
    shape: dict = TINY,
    tokenizer=None,
    longest_edge: int | None = None,
    splitting: bool = True,
    seed: int = 0,
    corpus: list[str] = (),
) -> Path:
    """Save a random Idefics3ForConditionalGeneration + processor to `out_dir`; returns the path.

    `longest_edge`: images are resized so their longest side is this, then split into tiles of the
    vision encoder's size (default: 3 tiles per side, as SmolVLM does at 4x its 512-px tiles).
    """
    from transformers import GenerationConfig, Idefics3Config, Idefics3ForConditionalGeneration

    out = Path(out_dir)
    v, t = shape["vision"], shape["text"]
    tok = tokenizer or build_tokenizer(IDEFICS3_SPECIALS, corpus)
    proc = idefics3_processor(tok, v["image_size"], v["patch_size"], shape["scale_factor"], longest_edge or 3 * v["image_size"], splitting)
    vocab = shape.get("vocab_size") or len(proc.tokenizer)
    eos = proc.tokenizer.convert_tokens_to_ids("<end_of_utterance>")
    cfg = Idefics3Config(
        vision_config=dict(v),
        text_config=dict(model_type="llama", vocab_size=vocab, pad_token_id=proc.tokenizer.pad_token_id, eos_token_id=eos, tie_word_embeddings=False, **t),
        scale_factor=shape["scale_factor"],
        image_token_id=proc.tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=proc.tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(cfg)
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=proc.tokenizer.pad_token_id, bos_token_id=None)
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out
