"""The one prompt rule of every command that builds a prompt (style train, style wrlogp, style sweep, caption,
the judge): which placeholders a prompt may hold and how they are filled, and what `''` means.

- Placeholders: `{style}` (a caption prompt: the target style, e.g. "Write a {style} caption for this image."),
  `{reference}` and `{caption}` (a judge prompt). All are filled by `fill_prompt`, in one pass (braces inside a
  filled-in caption are left alone); a placeholder nothing fills here is an error naming it, never sent to the
  model as literal text. Any other `{...}` is ordinary text.
- `''` means no text prompt at all, just the image, in every family: SmolVLM (Idefics3) gets its image tokens
  alone, as SmolVLM-Base's default prompt; Qwen2-VL its chat turn holding only the image. `None` means the
  default: with a capalign adapter, the prompt it was trained with (recorded in its capalign_adapter.json),
  else the family's own.
"""

from __future__ import annotations

import re

from .. import CapalignError

PLACEHOLDERS = ("style", "reference", "caption")
_SLOT = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")


def placeholders(template: str) -> list[str]:
    """The placeholders in `template`, each once, in order."""
    return list(dict.fromkeys(_SLOT.findall(template)))


def fill_prompt(template: str, where: str = "prompt", **values: str | None) -> str:
    """`template` with every placeholder replaced by its value; one whose value is not given (None) is a
    CapalignError naming it and `where` the prompt came from (e.g. "--prompt")."""
    missing = [k for k in placeholders(template) if values.get(k) is None]
    if missing:
        names = " and ".join(f"{{{k}}}" for k in missing)
        hint = " (the style of a style adapter is recorded in it: caption with its --adapter)" if "style" in missing else ""
        raise CapalignError(f"{where} {template!r} has {names}, but nothing here fills it in{hint}; write the text into the prompt instead")
    return _SLOT.sub(lambda m: str(values[m.group(1)]), template)
