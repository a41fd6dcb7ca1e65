"""Styled and factual captions of a shapes-world scene for preference data, with held-out templates.

`shapes.styled_captions` (five templates per style, kept unchanged because the nano captioner's
tokenizer corpus and the ViZer study's Base depend on those manifest rows) makes style trivial to
detect. Here a caption is composed from parts: an opener, a frame and a closer per style, plus the
object list in varied phrasings, so each style has thousands of combinations. Every part list is cut
into a held-in set (train split) and a disjoint held-out set used only in the test split, so a style
classifier's test accuracy measures generalisation to unseen phrasings, not recall of a template.

Every caption names every object as "<size> <colour> <shape>" followed by its position (one of a
few phrasings), in left-to-right order; style parts never use a shape noun, one of its synonyms
("ring", "box", "dot", ...), a colour, a size or a position word ("left", "right", "middle",
"centre", "center"), so the grounding metric finds exactly the scene's objects (tests check it).
"""

from __future__ import annotations

import random
import re

from .shapes import COLORS, SHAPES, SIZES, STYLES, Scene, _join, factual_captions

# Position phrasings (used in both splits: they carry content, not style).
WHERE_FORMS = {
    "left": ("on the left", "on the left side", "at the left"),
    "middle": ("in the middle", "in the centre", "in the center"),
    "right": ("on the right", "on the right side", "at the right"),
}
POSITION_WORDS = ("left", "right", "middle", "centre", "center")

# Frames: {all} = the object list; "[a|b]" picks a for one object, b for several (verb agreement).
FRAMES = {
    "humorous": {
        "in": [
            "{all} [walks|walk] into a bar and the bartender asks if this is a joke",
            "{all} [refuses|refuse] to do homework today",
            "{all}, secretly plotting to steal the last slice of pizza",
            "{all} [tries|try] stand-up comedy and nobody laughs",
            "{all} [is|are] clearly plotting to steal your lunch",
            "the geometry club reports that {all} [has|have] eaten all the snacks again",
            "{all} [thinks|think] this is a costume party",
            "nobody told {all} that the meeting was cancelled",
            "{all} [is|are] still waiting for the punchline",
            "{all} [has|have] no idea why everyone is laughing",
            "{all} [forgets|forget] the password for the third time",
            "{all}, auditioning for a sitcom nobody asked for",
            "{all} [pretends|pretend] to be busy when the boss walks by",
            "meet {all}, professional couch [potato|potatoes]",
            "{all} [is|are] definitely not hiding a rubber chicken",
            "my tax returns, as drawn by {all}",
            "{all} [has|have] entered the chat",
            "{all}, trying very hard to look cool",
            "plot twist: {all} [was|were] the clown all along",
            "{all} [is|are] the reason we can't have nice things",
            "{all} [dances|dance] badly at the office party",
            "{all} [is|are] out of coffee and out of patience",
            "{all} [photobombs|photobomb] the family portrait",
            "{all}, overdressed for a pajama party",
        ],
        "out": [
            "{all} [slips|slip] on a banana peel in slow motion",
            "{all} [headlines|headline] the goofiest prank video of the year",
            "{all} [attempts|attempt] a magic trick and [loses|lose] the rabbit",
            "day three of {all} pretending to understand the group chat",
            "{all} [has|have] a dad joke for every occasion",
            "{all}, [the wackiest cartoon villain|the wackiest cartoon villains] in town",
            "{all} [practises|practise] juggling with spaghetti",
            "witness {all} failing spectacularly at karaoke",
        ],
    },
    "romantic": {
        "in": [
            "{all}, bathed in soft moonlight",
            "my heart whispers of {all}, together forever",
            "a tender moment: {all}, dreaming sweetly",
            "{all}, a love story written in gentle light",
            "{all} [waits|wait] longingly for true love",
            "{all}, sharing a quiet kiss at sunset",
            "{all} [dances|dance] slowly by candlelight",
            "love letters from {all}",
            "{all}, lost in a sweet and endless dream",
            "{all} [holds|hold] my heart so gently",
            "the night belongs to {all}, wrapped in warm affection",
            "forever yours, {all}",
            "{all}, glowing with the warmth of a first kiss",
            "on a rose-scented evening, {all} [waits|wait] for a lover",
            "{all} [sighs|sigh] softly, dreaming of romance",
            "{all}, adored beyond words",
            "every heartbeat sings of {all}",
            "a candlelit dinner for {all}",
            "{all} [is|are] falling in love all over again",
            "{all}, as lovely as a summer romance",
            "sweet nothings whispered to {all}",
            "{all} [blushes|blush] at a secret admirer",
            "the moon smiles down on {all}",
            "{all} [keeps|keep] a love note close to the heart",
        ],
        "out": [
            "{all} [serenades|serenade] the evening with a love song",
            "{all}, cherished like a treasured valentine",
            "a soulmate's promise kept by {all}",
            "{all} [swoons|swoon] beneath a sky full of wishes",
            "rose petals fall softly around {all}",
            "{all}, devoted and yearning by the window",
            "an eternal embrace for {all}",
            "{all} [longs|long] for a sweetheart far away",
        ],
    },
    "factual": {  # held-in factual captions are shapes.factual_captions; these are the held-out phrasings
        "in": [],
        "out": [
            "the picture shows {all}",
            "this image contains {all}",
            "visible here: {all}",
            "a simple drawing of {all}",
            "in this picture: {all}",
        ],
    },
}

OPENERS = {
    "humorous": {
        "in": ["", "", "", "lol, ", "ok so ", "breaking news: ", "fun fact: ", "true story: ", "no joke: ", "spotted: ",
               "caption this: ", "help, ", "and now for something silly: "],
        "out": ["", "ha! ", "get this: ", "wait for it... ", "hot take: "],
    },
    "romantic": {
        "in": ["", "", "", "oh, ", "my love, ", "darling, ", "tonight, ", "in the hush of evening, ", "softly, ",
               "with all my heart: ", "dearest, ", "beneath the moon, "],
        "out": ["", "my beloved, ", "as the sun sets, ", "sweetheart, ", "with a sigh, "],
    },
}

CLOSERS = {
    "humorous": {
        "in": [".", ", lol.", ", hilarious.", ". classic.", ", what a clown show.", ". i can't even.", ", no refunds.",
               ". ten out of ten comedy.", ", send help.", " (true story)."],
        "out": [".", ", haha.", ". absolutely ridiculous.", ", cue the laugh track.", ". what a goofball."],
    },
    "romantic": {
        "in": [".", ", as if in love.", ", forever and always.", ", my heart sighs.", ", so tender.", ", my darling.",
               ", love everlasting.", ", a dream come true.", ", hearts aflutter."],
        "out": [".", ", with devotion.", ", truly, madly, deeply.", ", my one and only.", ", enchanted."],
    },
}


def _agree(text: str, one: bool) -> str:
    """'[walks|walk]' -> 'walks' for one object, 'walk' for several."""
    out, i = [], 0
    while (j := text.find("[", i)) >= 0:
        k = text.index("]", j)
        sing, plur = text[j + 1 : k].split("|")
        out += [text[i:j], sing if one else plur]
        i = k + 1
    return "".join(out + [text[i:]])


def object_phrases(scene: Scene, rng: random.Random) -> list[str]:
    """One phrase per object, left to right: '<a|the> <size> <colour> <shape> <position phrasing>'."""
    art = rng.choice(("a", "the"))
    return [f"{art} {o.size} {o.color} {o.name} {rng.choice(WHERE_FORMS[o.position])}" for o in scene.objects]


def styled_caption(scene: Scene, style: str, rng: random.Random, heldout: bool = False) -> str:
    """One caption in `style` from the held-in parts (train) or the held-out parts (test)."""
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; expected one of {', '.join(STYLES)}")
    part = "out" if heldout else "in"
    frame = rng.choice(FRAMES[style][part])
    opener, closer = rng.choice(OPENERS[style][part]), rng.choice(CLOSERS[style][part])
    body = _agree(frame, len(scene.objects) == 1).replace("{all}", _join(object_phrases(scene, rng)))
    return opener + body + closer


def factual_caption(scene: Scene, rng: random.Random, heldout: bool = False) -> str:
    """A factual caption: one of `shapes.factual_captions` (train) or a held-out neutral phrasing (test)."""
    if not heldout:
        return rng.choice(factual_captions(scene))
    return rng.choice(FRAMES["factual"]["out"]).replace("{all}", _join(object_phrases(scene, rng))) + "."


_WHERE = "|".join(sorted({re.escape(w) for forms in WHERE_FORMS.values() for w in forms}, key=len, reverse=True))
_OBJECT = re.compile(rf"\b(?:(?:a|the)\s+)?(?:(?:{'|'.join(SIZES)}|{'|'.join(COLORS)})\s+)*(?:{'|'.join(SHAPES)})s?\b(?:\s+(?:{_WHERE})\b)?")


def caption_frame(caption: str) -> str:
    """The style frame of a shapes-world caption: every object phrase (article, size, colour, shape, position)
    masked and runs of them joined, e.g. "no joke: OBJS, overdressed for a pajama party, hilarious." Two
    captions with one frame differ only in what they describe, not in how they say it."""
    masked = _OBJECT.sub("OBJ", caption.lower().strip())
    return re.sub(r"OBJ(?:(?:,\s*|\s+)(?:and\s+)?OBJ)*", "OBJS", masked)


def template_counts() -> dict:
    """Distinct (opener, frame, closer) combinations per style and part (object phrasings multiply these)."""
    return {s: {p: len(FRAMES[s][p]) * len(set(OPENERS[s][p])) * len(set(CLOSERS[s][p])) for p in ("in", "out")} for s in STYLES}


# ---- the shapes world as preference data --------------------------------------------------------
def _rows(spec) -> list[tuple[dict, object]]:
    """(manifest-like row, image) per scene: from `shapes:N[:SEED]` (the scenes `capalign shapes --n N --seed
    SEED --split style` writes: same ids, objects and factual captions, drawn on demand) or a manifest file."""
    from pathlib import Path

    from .. import CapalignError
    from .shapes import IMAGE_SIZE, render, sample_scene

    if isinstance(spec, Path):
        from ..io import read_jsonl_rows

        out = []
        for n, r in read_jsonl_rows(spec, "shapes manifest"):
            if not isinstance(r.get("image"), str) or not isinstance(r.get("objects"), list):
                raise CapalignError(f"{spec} line {n}: a shapes-world row needs an 'image' path and an 'objects' list")
            out.append((r, spec.parent / r["image"]))
        return out
    parts = spec.split(":")
    try:
        n, world = int(parts[1]), int(parts[2]) if len(parts) > 2 else 0
    except (IndexError, ValueError):
        raise CapalignError(f"bad shapes spec {spec!r}; expected shapes:N or shapes:N:SEED (N images)") from None
    if n < 2 or len(parts) > 3:
        raise CapalignError(f"bad shapes spec {spec!r}; expected shapes:N[:SEED] with N >= 2")
    out = []
    for i in range(n):
        scene = sample_scene(random.Random(f"capalign-shapes/{world}/style/{i}"))  # make_example's first draw
        row = {"id": f"style-{i:06d}", "captions": factual_captions(scene), "objects": [o.to_dict(IMAGE_SIZE) for o in scene.objects]}
        out.append((row, lambda scene=scene: render(scene, IMAGE_SIZE)))
    return out


def shapes_pairs(spec, seed: int, test_share: float) -> list:
    """Both styles' pairs of every scene, built from its objects: chosen = `styled_caption`, rejected =
    `factual_caption`, held-out templates for the scenes of the test split (the split open_preferences
    makes with the same seed), references = the scene's factual captions, objects for grounding."""
    from .pairs import Pair, split_groups
    from .shapes import scene_from_objects

    rows = _rows(spec)
    test = split_groups([r["id"] for r, _ in rows], seed, test_share)
    pairs = []
    for row, image in rows:
        scene, held = scene_from_objects(row["objects"]), row["id"] in test
        for style in STYLES:
            rng = random.Random(f"capalign-style/{seed}/{row['id']}/{style}")
            chosen, rejected = styled_caption(scene, style, rng, held), factual_caption(scene, rng, held)
            pairs.append(Pair(f"{row['id']}-{style}", image, None, chosen, rejected, style, group=row["id"],
                              references=list(row["captions"]), objects=row["objects"], meta={"heldout_templates": held}))
    return pairs
