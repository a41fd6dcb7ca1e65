"""Qwen2-VL / Qwen2.5-VL processors on machines without ``torchvision``.

The obstacle
------------
transformers 5.x ships two backends for the Qwen2-VL *image* processor:
``Qwen2VLImageProcessor`` (torchvision backend) and ``Qwen2VLImageProcessorPil``
(PIL/numpy backend, ``models/qwen2_vl/image_processing_pil_qwen2_vl.py``), and
``AutoImageProcessor`` falls back to the PIL one when torchvision is missing.
The *video* processor (``Qwen2VLVideoProcessor``) only has a torchvision backend.

``Qwen2VLProcessor.__init__`` (and ``Qwen2_5_VLProcessor.__init__``) always takes a
``video_processor`` argument and ``ProcessorMixin.__init__``
(``transformers/processing_utils.py``, the loop ending in
``self.check_argument_for_proper_class(attribute_name, arg)``, line 667 in 5.23) checks
*every* sub-processor -- even ``None`` -- with ``isinstance(arg, <base class>)``.
For ``video_processor`` the base class is named ``"VideoProcessorMixin"``
(``MODALITY_TO_BASE_CLASS_MAPPING``) and is resolved by name in
``ProcessorMixin.get_possibly_dynamic_module`` (crash at line 2041 in 5.23): first as an attribute of
the top-level ``transformers`` module, which only exports ``VideoProcessorMixin``
when torchvision is available (``transformers/__init__.py``,
``_import_structure["video_processing_utils"]`` in the torchvision ``else`` branch),
then by iterating ``VIDEO_PROCESSOR_MAPPING._extra_content`` -- but without
torchvision ``VIDEO_PROCESSOR_MAPPING`` is a ``DummyObject`` and the lookup crashes
with ``AttributeError: type object 'VIDEO_PROCESSOR_MAPPING' has no attribute
'_extra_content'``.  So construction from parts, ``from_pretrained`` (which ends in
``cls(*args)``; before that ``AutoVideoProcessor.from_pretrained`` raises
"requires the Torchvision library") and therefore ``save_pretrained`` all fail.
The class ``transformers.video_processing_utils.VideoProcessorMixin`` itself imports
fine without torchvision; only the *name lookup* and the concrete video processor
are unavailable.

Decision
--------
* No global monkeypatching.  We construct the **real** processor class
  (``Qwen2VLProcessor`` / ``Qwen2_5_VLProcessor``) with the **real** image processor
  (``Qwen2VLImageProcessorPil``, chosen by ``AutoImageProcessor`` itself) and, for
  the video slot, a :class:`VideoProcessorUnavailable` placeholder -- a genuine
  ``VideoProcessorMixin`` subclass, so the library's own ``isinstance`` check is
  satisfied *legitimately*.  The only bypass is the by-name class lookup: for the one
  ``__init__`` call we shadow ``check_argument_for_proper_class`` on the *instance*
  (instance ``__dict__``, removed right after) with a version that resolves
  ``VideoProcessorMixin`` directly from ``transformers.video_processing_utils`` and
  performs the same ``isinstance`` test; all other attributes are delegated to the
  unmodified library check.  Nothing outside that single object is touched, so it
  is thread-safe and invisible to other code.
* The placeholder stores the checkpoint's raw video-processor config and returns it
  verbatim from ``to_dict()`` (with ``video_processor_type`` = the real class,
  ``Qwen2VLVideoProcessor``), so ``save_pretrained`` on a torchvision-less machine
  writes a ``processor_config.json`` that a torchvision machine loads with the real
  video processor.  Passing ``videos=`` raises a clear ``ImportError``.
* :func:`load_processor` is the entry point replacing ``AutoProcessor.from_pretrained``.
  When torchvision is importable (or the checkpoint is not a Qwen-VL one) it *is*
  ``AutoProcessor.from_pretrained(path, **kwargs)`` -- no behaviour change.  Otherwise
  it loads tokenizer (``AutoTokenizer``), image processor (``AutoImageProcessor`` ->
  PIL backend), chat template and video config from the same files
  ``AutoProcessor`` would read (both the 5.x ``processor_config.json`` layout and the
  legacy hub layout ``preprocessor_config.json`` / ``video_preprocessor_config.json``
  / ``chat_template.json``).

Numerical equivalence
---------------------
``smart_resize`` (target size), the patchify layout, rescale/normalize constants and
hence ``image_grid_thw``, the number of ``<|image_pad|>`` tokens and ``input_ids`` are
identical between backends (the PIL ``patchify`` transposes
``(C, gh/m, m, p, gw/m, m, p) -> (gh/m, gw/m, mh, mw, C, [T], ph, pw)`` exactly like the
torchvision ``permute(0, 2, 5, 3, 6, 1, 4, 7)`` + temporal ``unsqueeze(6)``).
``pixel_values`` are identical (up to float32 rounding of rescale/normalize) whenever
no resize is needed (height and width already multiples of ``patch_size*merge_size``
within the pixel budget).  When a resize *is* needed, the PIL backend uses PIL's
bicubic filter while the torchvision backend uses ``torchvision`` bicubic (antialiased)
on tensors: values differ by small interpolation noise.  The PIL path is the original
reference implementation (it is what transformers 4.x used by default,
``use_fast=False``), so it is the faithful one for released Qwen2-VL checkpoints.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = [
    "QWEN_VL_PROCESSOR_CLASSES",
    "VideoProcessorUnavailable",  # noqa: F822 (defined at import time, below, when torchvision is missing)
    "is_qwen_vl_processor_dir",
    "load_processor",
    "make_qwen_vl_processor",
    "qwen_vl_image_processor",
    "qwen_vl_video_processor",
    "torchvision_available",
]

#: Processor classes handled by this module (same ``__init__`` / same sub-processors).
QWEN_VL_PROCESSOR_CLASSES = ("Qwen2VLProcessor", "Qwen2_5_VLProcessor")
_QWEN_VL_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl")
_REAL_VIDEO_PROCESSOR_TYPE = "Qwen2VLVideoProcessor"


@lru_cache(maxsize=1)
def torchvision_available() -> bool:
    """Whether transformers considers torchvision usable (its own check)."""
    from transformers.utils import is_torchvision_available

    return bool(is_torchvision_available())


def _video_processor_mixin() -> type:
    # Importable without torchvision (only the top-level re-export is conditional).
    from transformers.video_processing_utils import VideoProcessorMixin

    return VideoProcessorMixin


def _make_placeholder_class() -> type:
    base = _video_processor_mixin()

    class VideoProcessorUnavailable(base):  # type: ignore[misc, valid-type]
        """Stand-in for ``Qwen2VLVideoProcessor`` when torchvision is missing.

        It satisfies ``Qwen2VLProcessor``'s sub-processor slot, keeps the checkpoint's
        video-processor config so ``save_pretrained`` round-trips it, and raises
        ``ImportError`` if asked to process videos.
        """

        model_input_names = ["pixel_values_videos", "video_grid_thw"]

        def __init__(self, config: dict[str, Any] | None = None, **kwargs: Any) -> None:
            # Deliberately do not call VideoProcessorMixin.__init__: it would validate and
            # set kwargs for a processing pipeline that cannot run here.
            cfg = dict(config or {})
            cfg.update(kwargs)
            cfg.setdefault("video_processor_type", _REAL_VIDEO_PROCESSOR_TYPE)
            cfg.pop("processor_class", None)
            self._raw_config = cfg
            self._processor_class = None
            # Attributes read by Qwen2VLProcessor.replace_video_token / _get_num_multimodal_tokens.
            self.merge_size = cfg.get("merge_size", 2)
            self.patch_size = cfg.get("patch_size", 14)
            self.temporal_patch_size = cfg.get("temporal_patch_size", 2)

        def _unavailable(self, *args: Any, **kwargs: Any):
            raise ImportError(
                "Video inputs for Qwen2-VL need the torchvision-backed Qwen2VLVideoProcessor, "
                "but torchvision is not installed. Image inputs work without it."
            )

        __call__ = _unavailable
        preprocess = _unavailable
        get_num_of_video_patches = _unavailable

        def to_dict(self) -> dict[str, Any]:
            return dict(self._raw_config)

        def __repr__(self) -> str:
            return f"VideoProcessorUnavailable({json.dumps(self._raw_config, sort_keys=True)})"

    return VideoProcessorUnavailable


def __getattr__(name: str):  # lazy: keep `import capalign.models.compat` cheap
    if name == "VideoProcessorUnavailable":
        cls = _placeholder_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)


@lru_cache(maxsize=1)
def _placeholder_class() -> type:
    return _make_placeholder_class()


def _processor_cls(name_or_cls: str | type):
    if isinstance(name_or_cls, type):
        return name_or_cls
    if name_or_cls not in QWEN_VL_PROCESSOR_CLASSES:
        raise ValueError(f"unsupported processor class {name_or_cls!r}; expected one of {QWEN_VL_PROCESSOR_CLASSES}")
    import transformers

    return getattr(transformers, name_or_cls)


def qwen_vl_image_processor(**kwargs: Any):
    """The real Qwen2-VL image processor for this machine's backend.

    ``Qwen2VLImageProcessor`` (torchvision) when available, else
    ``Qwen2VLImageProcessorPil`` -- the same choice ``AutoImageProcessor`` makes.
    """
    if torchvision_available():
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor as cls
    else:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil as cls
    return cls(**kwargs)


def qwen_vl_video_processor(**kwargs: Any):
    """The real ``Qwen2VLVideoProcessor`` if torchvision exists, else a :class:`VideoProcessorUnavailable`
    carrying the same kwargs as its config (saved verbatim)."""
    if torchvision_available():
        from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

        return Qwen2VLVideoProcessor(**kwargs)
    return _placeholder_class()(kwargs)


def make_qwen_vl_processor(
    image_processor: Any,
    tokenizer: Any,
    video_processor: Any = None,
    chat_template: str | None = None,
    *,
    processor_cls: str | type = "Qwen2VLProcessor",
):
    """Construct a real ``Qwen2VLProcessor`` / ``Qwen2_5_VLProcessor`` from parts.

    With torchvision this is exactly ``processor_cls(image_processor, tokenizer, video_processor,
    chat_template=chat_template)``; ``video_processor=None`` then means a default
    ``Qwen2VLVideoProcessor`` mirroring the image processor's patch/merge sizes.
    Without torchvision ``video_processor`` must be ``None`` or a ``VideoProcessorMixin`` (normally a
    :class:`VideoProcessorUnavailable`), and the video class check is resolved without the
    torchvision-only name lookup, on this instance only.
    """
    cls = _processor_cls(processor_cls)
    if video_processor is None:
        video_processor = qwen_vl_video_processor(
            patch_size=getattr(image_processor, "patch_size", 14),
            temporal_patch_size=getattr(image_processor, "temporal_patch_size", 2),
            merge_size=getattr(image_processor, "merge_size", 2),
        )
    if torchvision_available():
        return cls(image_processor, tokenizer, video_processor, chat_template=chat_template)

    mixin = _video_processor_mixin()

    def check_argument_for_proper_class(argument_name: str, argument: Any):
        # Same isinstance test as ProcessorMixin.check_argument_for_proper_class, but resolving the
        # base class directly instead of via transformers.VIDEO_PROCESSOR_MAPPING (a DummyObject here).
        if argument_name == "video_processor":
            if not isinstance(argument, mixin):
                raise TypeError(
                    f"Received a {type(argument).__name__} for argument video_processor, "
                    "but a VideoProcessorMixin was expected."
                )
            return mixin
        return cls.check_argument_for_proper_class(proc, argument_name, argument)

    proc = cls.__new__(cls)
    proc.__dict__["check_argument_for_proper_class"] = check_argument_for_proper_class
    try:
        cls.__init__(proc, image_processor, tokenizer, video_processor, chat_template=chat_template)
    finally:
        proc.__dict__.pop("check_argument_for_proper_class", None)
    return proc


def _read_json(path: Path) -> dict[str, Any] | None:
    if path.is_file():
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    return None


def _local_processor_class(path: Path) -> str | None:
    """processor_class recorded in a local checkpoint (processor/preprocessor/tokenizer config), or one
    inferred from config.json's model_type."""
    for name in ("processor_config.json", "preprocessor_config.json", "video_preprocessor_config.json",
                 "tokenizer_config.json"):
        cfg = _read_json(path / name)
        if cfg and cfg.get("processor_class"):
            return cfg["processor_class"]
    cfg = _read_json(path / "config.json")
    if cfg and cfg.get("model_type") in _QWEN_VL_MODEL_TYPES:
        return "Qwen2_5_VLProcessor" if cfg["model_type"] == "qwen2_5_vl" else "Qwen2VLProcessor"
    return None


def is_qwen_vl_processor_dir(path: str | os.PathLike) -> bool:
    """True if ``path`` is a local directory holding a Qwen2-VL / Qwen2.5-VL processor."""
    p = Path(path)
    return p.is_dir() and _local_processor_class(p) in QWEN_VL_PROCESSOR_CLASSES


def load_processor(path: str | os.PathLike, **kwargs: Any):
    """Drop-in for ``AutoProcessor.from_pretrained(path, **kwargs)`` that also works for Qwen2-VL /
    Qwen2.5-VL without torchvision.

    ``path`` should be a local directory (this project never downloads).  With torchvision, or for
    any non-Qwen-VL checkpoint, this simply calls ``AutoProcessor.from_pretrained``.  ``kwargs`` are
    forwarded to the tokenizer/image-processor ``from_pretrained`` calls in the fallback path.
    """
    from transformers import AutoProcessor

    if torchvision_available() or not is_qwen_vl_processor_dir(path):
        return AutoProcessor.from_pretrained(path, **kwargs)

    from transformers import AutoImageProcessor, AutoTokenizer

    p = Path(path)
    cls = _processor_cls(_local_processor_class(p))
    # Same resolution AutoProcessor uses: processor_config.json (5.x) + chat_template.{jinja,json}.
    processor_dict, _ = cls.get_processor_dict(str(p), local_files_only=True)

    tokenizer = AutoTokenizer.from_pretrained(str(p), **kwargs)
    image_processor = AutoImageProcessor.from_pretrained(str(p), **kwargs)

    video_cfg = processor_dict.get("video_processor")
    if not isinstance(video_cfg, dict):
        video_cfg = _read_json(p / "video_preprocessor_config.json")
    if not video_cfg:
        video_cfg = {
            "patch_size": getattr(image_processor, "patch_size", 14),
            "temporal_patch_size": getattr(image_processor, "temporal_patch_size", 2),
            "merge_size": getattr(image_processor, "merge_size", 2),
        }
    video_processor = _placeholder_class()(video_cfg)

    chat_template = processor_dict.get("chat_template")
    if chat_template is None:
        chat_template = getattr(tokenizer, "chat_template", None)
    return make_qwen_vl_processor(
        image_processor, tokenizer, video_processor, chat_template=chat_template, processor_cls=cls
    )
