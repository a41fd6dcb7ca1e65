"""Tiny random CLIP / SigLIP models (byte-level BPE tokenizer, 32-px image processor) for CLIPScore
tests and for running documented `capalign evaluate --metrics ...,clipscore` commands without a download."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable


def _tokenizer(max_len: int, corpus: Iterable[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|startoftext|>", "<|endoftext|>"]
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(["a photo depicts a red circle and a blue square"] * 5 + list(corpus), trainer)
    tok.post_processor = processors.TemplateProcessing(single="<|startoftext|> $A <|endoftext|>", special_tokens=[(s, tok.token_to_id(s)) for s in specials])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=specials[0], eos_token=specials[1], pad_token=specials[1], model_max_length=max_len)


def build_tiny_clip(out: str | Path, kind: str = "clip", max_len: int = 16, corpus: Iterable[str] = ()) -> str:
    """Save a seeded random CLIP (kind="clip") or SigLIP model + processor to `out`; returns the path."""
    import torch
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        SiglipConfig,
        SiglipImageProcessor,
        SiglipModel,
        SiglipProcessor,
    )

    tok = _tokenizer(max_len, corpus)
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=max_len, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    vision = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2)
    torch.manual_seed(0)
    if kind == "clip":
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
        proc = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}), tokenizer=tok)
    else:
        model = SiglipModel(SiglipConfig(text_config={**text, "projection_size": 32}, vision_config=vision))
        proc = SiglipProcessor(image_processor=SiglipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok)
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return str(out)
