"""Run the frozen vision tower once per distinct image, however often a trainer asks for it.

GRPO samples several captions per image, and TRL's GRPOTrainer treats every (image, caption) row on
its own: with G samples per image it runs the vision tower G times to generate, G times again in the
loss forward, and G more for the KL reference (tests/test_rl.py counts them). The vision tower and
connector are frozen in every capalign method, so all of those passes return the same features.

`SharedVision` wraps the `get_image_features` method that both `generate()` (through
`base_model.get_image_features`) and `forward()` call, on the model instance: images are keyed by
their pixel tensors (a cheap fingerprint, confirmed by exact equality), each distinct image goes
through the original method once, and later calls reuse its LM image embeddings until `clear()`.
Outputs carry `pooler_output` only (the per-image LM embeddings the language model reads);
`last_hidden_state` is not kept, so install it only around training (the `with` block), not around
`VLM.encode`, which pools the encoder states.
"""

from __future__ import annotations

import functools
import inspect

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling


class SharedVision:
    def __init__(self, vlm):
        self.inner = vlm.model.model  # the module whose get_image_features generate() and forward() both call
        self.count_key = vlm.image_count_key
        self.vision_keys = vlm.vision_keys
        self.vlm = vlm
        self.original = None
        self.cache: dict[tuple, list[tuple[dict, torch.Tensor]]] = {}
        self.requested = 0  # images asked for since construction (for tests and the benchmark)
        self.encoded = 0  # images that actually went through the vision tower

    # ---- install / remove -------------------------------------------------------------------------
    def __enter__(self) -> "SharedVision":
        self.original = self.inner.get_image_features
        self._sig = inspect.signature(self.original)

        @functools.wraps(self.original)  # generate() reads the signature to pick its arguments
        def get_image_features(*args, **kw):
            return self(*args, **kw)

        self.inner.get_image_features = get_image_features
        return self

    def __exit__(self, *exc) -> None:
        del self.inner.get_image_features  # back to the class method
        self.clear()

    def clear(self) -> None:
        self.cache.clear()

    # ---- the shared pass ----------------------------------------------------------------------------
    def _items(self, named: dict) -> list[dict]:
        """get_image_features tensors of n images -> n dicts of one image each (the adapter's vision_slice)."""
        vision = {k: v for k, v in named.items() if k in self.vision_keys and v is not None}
        rest = {k: v for k, v in named.items() if k not in self.vision_keys and v is not None}
        n = len(named[self.count_key])
        return [{**a, **b} for a, b in (self.vlm.vision_slice(vision, rest, i, i + 1) for i in range(n))]

    @staticmethod
    def _key(item: dict) -> tuple:
        # sum and position-weighted sum of every tensor: equal images give equal keys; a collision between
        # different images is caught by the exact comparison in _lookup
        key = []
        for k in sorted(item):
            t = item[k].reshape(-1).double()
            key += [k, tuple(item[k].shape), float(t.sum()), float((t * torch.arange(1, t.numel() + 1, device=t.device, dtype=t.dtype)).sum())]
        return tuple(key)

    @staticmethod
    def _same(a: dict, b: dict) -> bool:
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def _lookup(self, key: tuple, item: dict):
        return next((f for stored, f in self.cache.get(key, ()) if self._same(stored, item)), None)

    @torch.no_grad()  # the tower and connector are frozen: nothing upstream of the LM embeddings trains
    def __call__(self, *args, **kw):
        named = dict(self._sig.bind(*args, **kw).arguments)
        extra = {k: v for k, v in (named.pop("kwargs", None) or {}).items() if k != "return_dict"}
        items = self._items(named)
        keys = [self._key(it) for it in items]
        feats = [self._lookup(k, it) for k, it in zip(keys, items)]
        first: list[int] = []  # one index per distinct image of this call that is not cached yet
        for i in (i for i, f in enumerate(feats) if f is None):
            if not any(keys[j] == keys[i] and self._same(items[j], items[i]) for j in first):
                first.append(i)
        if first:
            batch = {name: torch.cat([items[i][name] for i in first]) for name in items[first[0]]}
            out = self.original(**batch, **extra, return_dict=True)
            for i, f in zip(first, out.pooler_output):  # pooler_output: one [T_img, D_t] tensor per image
                self.cache.setdefault(keys[i], []).append((items[i], f.detach()))
        self.requested += len(items)
        self.encoded += len(first)
        return BaseModelOutputWithPooling(pooler_output=[f if f is not None else self._lookup(k, it) for k, it, f in zip(keys, items, feats)])
