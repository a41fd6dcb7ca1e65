"""The shapes world: a seeded generator of simple images with exact scene descriptions.

It is the project's embedded default data: no downloads, exact ground truth, and regular enough that
a ~0.7M-parameter captioner learns the canonical caption in minutes on a CPU. A scene has 1-3 objects,
each in its own horizontal third (left / middle / right), so objects never overlap and "left to
right" order is unambiguous. Per image we keep several caption kinds:

- `captions`: factual phrasings; `captions[0]` is canonical ("a small red circle on the left and a
  large blue square on the right.") and a pure function of the scene;
- `captions_web`: alt-text-like noise (vague, partial, opinionated), what web-trained VLMs imitate;
- `captions_humorous` / `captions_romantic`: complete, correct content in a recognisable style.

Everything is drawn from `random.Random` seeded per image with (seed, split, index), so image i is
the same whatever n is, and a dataset is reproducible byte-for-byte from its seed.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw

from .. import __version__
from ..config import arg, save_config, show_config
from ..io import atomic_write_bytes, atomic_write_json, atomic_write_text
from ..utils import print0

SHAPES = ("circle", "square", "triangle", "diamond")
# Saturated and far apart in RGB (and in hue), so even a small image leaves no doubt.
COLORS = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 230),
    "yellow": (240, 210, 20),
    "purple": (145, 40, 190),
    "orange": (250, 130, 10),
}
# Object side as a fraction of the cell width (a third of the image): 24 vs ~42 px at 144 px.
SIZES = {"small": 0.5, "large": 0.88}
POSITIONS = ("left", "middle", "right")
WHERE = {"left": "on the left", "middle": "in the middle", "right": "on the right"}
STYLES = ("humorous", "romantic")
# Default image side: three 48-px cells, so with 16-px patches and pixel shuffle x3 each image token of the
# nano captioner covers exactly one left / middle / right cell column (docs/nano.md).
IMAGE_SIZE = 144
GENERATOR_VERSION = 1
_SUPERSAMPLE = 4  # draw at 4x and downsample: antialiased edges without blur


@dataclass(frozen=True)
class ShapeObject:
    """One object. `box` is (x0, y0, x1, y1) as fractions of the image side, so any size renders."""

    name: str  # the shape: circle, square, triangle, diamond
    color: str
    size: str  # small or large
    position: str  # left, middle or right (the horizontal third)
    box: tuple[float, float, float, float]

    def bbox(self, image_size: int) -> list[int]:
        """Pixel bbox in an image of side `image_size` (rounded outwards)."""
        import math

        x0, y0, x1, y1 = (v * image_size for v in self.box)
        return [math.floor(x0), math.floor(y0), min(image_size, math.ceil(x1)), min(image_size, math.ceil(y1))]

    def phrase(self) -> str:
        """'a small red circle on the left': the unit every factual and styled caption is built from."""
        return f"a {self.size} {self.color} {self.name} {WHERE[self.position]}"

    def to_dict(self, image_size: int) -> dict:
        return {"name": self.name, "attributes": [self.color, self.size], "color": self.color, "size": self.size,
                "position": self.position, "bbox": self.bbox(image_size)}


@dataclass(frozen=True)
class Scene:
    """Objects ordered left to right, plus the background colour."""

    objects: tuple[ShapeObject, ...]
    background: tuple[int, int, int] = (235, 235, 235)
    meta: dict = field(default_factory=dict, compare=False)


def sample_scene(rng: random.Random) -> Scene:
    n = rng.randint(1, 3)
    positions = sorted(rng.sample(range(3), n))
    objects = []
    for p in positions:
        name, color, size = rng.choice(SHAPES), rng.choice(list(COLORS)), rng.choice(list(SIZES))
        side = SIZES[size] / 3  # fraction of the image
        slack_x = 1 / 3 - side
        x0 = p / 3 + rng.uniform(0.2, 0.8) * slack_x  # keep clear of the cell edges: never touching
        # vertical jitter within the middle band only: position words say nothing about height
        cy = 0.5 + rng.uniform(-0.22, 0.22)
        y0 = min(max(cy - side / 2, 0.04), 0.96 - side)
        objects.append(ShapeObject(name, color, size, POSITIONS[p], (x0, y0, x0 + side, y0 + side)))
    bg = tuple(rng.randint(226, 244) for _ in range(3))  # light grey with a faint seeded tint
    return Scene(tuple(objects), bg)


def render(scene: Scene, image_size: int = IMAGE_SIZE) -> Image.Image:
    big = image_size * _SUPERSAMPLE
    im = Image.new("RGB", (big, big), scene.background)
    draw = ImageDraw.Draw(im)
    for o in scene.objects:
        x0, y0, x1, y1 = (v * big for v in o.box)
        cx, cy, fill = (x0 + x1) / 2, (y0 + y1) / 2, COLORS[o.color]
        if o.name == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif o.name == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        elif o.name == "triangle":
            draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill)
        elif o.name == "diamond":
            draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
        else:
            raise ValueError(f"unknown shape {o.name!r}")
    return im.resize((image_size, image_size), Image.Resampling.BOX)


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


_COUNT = {2: "two shapes", 3: "three shapes"}


def factual_captions(scene: Scene) -> list[str]:
    """Complete, correct phrasings; [0] is canonical (objects left to right, fixed template)."""
    ph = [o.phrase() for o in scene.objects]
    bare = [f"a {o.size} {o.color} {o.name}" for o in scene.objects]
    n = len(ph)
    caps = [_join(ph) + "."]
    caps.append(f"there is {ph[0]}." if n == 1 else f"there are {_COUNT[n]}: {_join(ph)}.")
    caps.append(f"one shape: {ph[0]}." if n == 1 else "from left to right: " + ", ".join(bare) + ".")
    caps.append(" and ".join(f"{WHERE[o.position]} is a {o.size} {o.color} {o.name}" for o in scene.objects) + ".")
    caps.append(f"an image of {_join(ph)}.")
    return caps


_VAGUE = ["ITAP of a shape", "my favourite picture", "abstract art print", "geometry wallpaper hd", "untitled",
          "minimalist poster for my room", "kids learning shapes", "stock photo", "check out this pic!!",
          "simple design", "shapes, {year}", "IMG_{num}.jpg", "art class, {year}", "so aesthetic", "free clipart"]
_PARTIAL = ["a {c} {s}", "{c} {s}", "the best {c} {s} ever", "a {z} {s}", "my {c} {s} :)", "{s} clipart png",
            "look at this {z} {s}", "a {s}", "{c} {s} on grey background", "nice {s}"]


def web_captions(scene: Scene, rng: random.Random, k: int = 5) -> list[str]:
    """Alt-text-like captions: ~half mention one object partially (at most one of colour/size, sometimes
    a wrong colour), half are vague or opinionated. None is ever a complete description."""
    out: list[str] = []
    for _ in range(8 * k):  # distinct captions; bounded so a tiny template pool cannot loop forever
        if len(out) == k:
            break
        if rng.random() < 0.5:
            o = rng.choice(scene.objects)
            c = o.color if rng.random() < 0.8 else rng.choice([x for x in COLORS if x != o.color])
            cap = rng.choice(_PARTIAL).format(c=c, s=o.name, z=o.size)
        else:
            cap = rng.choice(_VAGUE).format(year=rng.randint(1950, 2024), num=rng.randint(1000, 9999))
        if cap not in out:
            out.append(cap)
    return out


def _humorous(ph: list[str]) -> list[str]:
    j, one = _join(ph), len(ph) == 1
    caps = [
        f"{j} {'walks' if one else 'walk'} into a bar, and the bartender says: is this some kind of joke? lol.",
        f"breaking news: {j} {'refuses' if one else 'refuse'} to do {'its' if one else 'their'} homework, hilarious.",
        f"{j}, secretly plotting to steal the last slice of pizza, lol.",
        f"{j} {'tries' if one else 'try'} stand-up comedy and nobody laughs, what a silly clown show.",
    ]
    if one:
        caps.append(f"{j} is clearly plotting to steal your lunch, lol.")
    else:
        caps.append(f"{_join(ph[:-1])} {'is' if len(ph) == 2 else 'are'} clearly plotting to steal the lunch of {ph[-1]}, lol.")
    return caps


def _romantic(ph: list[str]) -> list[str]:
    j, one = _join(ph), len(ph) == 1
    caps = [
        f"{j}, bathed in soft moonlight, as if in love.",
        f"my heart whispers of {j}, together forever.",
        f"a tender moment: {j}, dreaming sweetly under the stars.",
        f"{j}, a love story written in gentle light, my darling.",
    ]
    if one:
        caps.append(f"{j} waits longingly for its true love, heart full of tender hope.")
    else:
        caps.append(f"{ph[0]} gazes longingly at {_join(ph[1:])}, as if in love.")
    return caps


def styled_captions(scene: Scene, style: str, rng: random.Random, k: int = 3) -> list[str]:
    """k of the style's templates, seeded; each names every object with correct attributes."""
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; expected one of {', '.join(STYLES)}")
    ph = [o.phrase() for o in scene.objects]
    caps = _humorous(ph) if style == "humorous" else _romantic(ph)
    return rng.sample(caps, min(k, len(caps)))


def make_example(seed: int, index: int, image_size: int = IMAGE_SIZE, split: str | None = None) -> tuple[dict, bytes]:
    """(manifest row, PNG bytes) of image `index`; independent of every other index."""
    rng = random.Random(f"capalign-shapes/{seed}/{split or ''}/{index}")  # str seeds hash with sha512: stable
    scene = sample_scene(rng)
    iid = f"{split}-{index:06d}" if split else f"{index:06d}"
    buf = io.BytesIO()
    render(scene, image_size).save(buf, format="PNG")  # no metadata/timestamps: bytes depend on pixels only
    row = {"id": iid, "image": f"images/{iid}.png", "captions": factual_captions(scene),
           "captions_web": web_captions(scene, rng), "captions_humorous": styled_captions(scene, "humorous", rng),
           "captions_romantic": styled_captions(scene, "romantic", rng),
           "objects": [o.to_dict(image_size) for o in scene.objects]}
    return row, buf.getvalue()


def write_dataset(out_dir: str | Path, n: int, seed: int = 0, image_size: int = IMAGE_SIZE, split: str | None = None) -> Path:
    """Write images/<id>.png, manifest.jsonl and dataset.json under out_dir (each file atomically)."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        row, png = make_example(seed, i, image_size, split)
        path = out / row["image"]
        # re-runs skip identical files: cheap to compare, and keeps mtimes of unchanged images
        if not (path.exists() and path.read_bytes() == png):
            atomic_write_bytes(path, png)
        lines.append(json.dumps(row, ensure_ascii=False))
    atomic_write_text(out / "manifest.jsonl", "\n".join(lines) + "\n")
    atomic_write_json(out / "dataset.json", {
        "generator": "capalign.data.shapes", "generator_version": GENERATOR_VERSION, "capalign_version": __version__,
        "seed": seed, "n": n, "image_size": image_size, "split": split,
        "shapes": list(SHAPES), "colors": COLORS, "sizes": SIZES, "positions": list(POSITIONS), "styles": list(STYLES)})
    return out


@dataclass
class ShapesConfig:
    """Write a shapes-world dataset: images/<id>.png, manifest.jsonl (captions of every kind, objects), dataset.json."""

    out: str = arg(help="Output folder (created; existing identical files are kept).")
    n: int = arg(1000, "Number of images.")
    seed: int = arg(0, "Seed; the dataset is reproducible byte-for-byte from (seed, split, n, image_size).")
    image_size: int = arg(IMAGE_SIZE, "Image side in pixels (square images).")
    split: str = arg("", "Optional split name (e.g. train, val): prefixes ids and gives an independent stream per split.")

    def __post_init__(self):
        if not str(self.out).strip():
            raise ValueError("out must be a folder path")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if not 16 <= self.image_size <= 4096:
            raise ValueError(f"image_size must be in [16, 4096], got {self.image_size}")
        if self.split and not self.split.replace("_", "").isalnum():
            raise ValueError(f"split must be alphanumeric (or _), got {self.split!r}")


def run(cfg: ShapesConfig) -> Path:
    show_config(cfg)
    out = write_dataset(cfg.out, cfg.n, cfg.seed, cfg.image_size, cfg.split or None)
    save_config(cfg, out)
    print0(f"wrote {cfg.n} images to {out} (manifest.jsonl, dataset.json)")
    return out


# ---- corrupted descriptions: a factual caption with one known error ------------------------------
CORRUPTIONS = ("colour", "shape", "size", "position", "drop", "add")


def scene_from_objects(objects: list[dict]) -> Scene:
    """The Scene of a manifest row's `objects` (boxes are not needed for captions)."""
    objs = [ShapeObject(o["name"], o["color"], o["size"], o["position"], (0.0, 0.0, 0.0, 0.0)) for o in objects]
    return Scene(tuple(sorted(objs, key=lambda o: POSITIONS.index(o.position))))


def corrupt(scene: Scene, kind: str, rng: random.Random) -> Scene | None:
    """The scene with exactly one error of `kind` (None where the kind cannot apply: dropping the only
    object, adding to a full scene, moving when every cell is taken): one object's colour, shape or size
    changed, one object moved to an empty cell, one object dropped, or one object invented in an empty cell."""
    objs = list(scene.objects)
    free = [p for p in POSITIONS if p not in {o.position for o in objs}]
    i = rng.randrange(len(objs))
    o = objs[i]
    if kind == "colour":
        objs[i] = ShapeObject(o.name, rng.choice([c for c in COLORS if c != o.color]), o.size, o.position, o.box)
    elif kind == "shape":
        objs[i] = ShapeObject(rng.choice([s for s in SHAPES if s != o.name]), o.color, o.size, o.position, o.box)
    elif kind == "size":
        objs[i] = ShapeObject(o.name, o.color, "large" if o.size == "small" else "small", o.position, o.box)
    elif kind == "position":
        if not free:
            return None
        objs[i] = ShapeObject(o.name, o.color, o.size, rng.choice(free), o.box)
    elif kind == "drop":
        if len(objs) < 2:
            return None
        del objs[i]
    elif kind == "add":
        if not free:
            return None
        objs.append(ShapeObject(rng.choice(SHAPES), rng.choice(list(COLORS)), rng.choice(list(SIZES)), rng.choice(free), (0.0, 0.0, 0.0, 0.0)))
    else:
        raise ValueError(f"unknown corruption {kind!r}; expected one of {', '.join(CORRUPTIONS)}")
    return Scene(tuple(sorted(objs, key=lambda x: POSITIONS.index(x.position))), scene.background)
