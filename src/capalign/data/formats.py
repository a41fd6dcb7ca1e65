"""Caption data as researchers already have it: COCO annotation and results files, Karpathy split files,
Flickr30k's caption files. Each reader is small, reads the file as distributed and returns plain rows.

| file | layout | ids |
|---|---|---|
| `captions_val2017.json` (COCO annotations) | `{"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]}` | `image_id` |
| COCO results (`--pred`) | `[{"image_id", "caption"}]` (what pycocotools' `loadRes` reads) | `image_id` |
| `dataset_coco.json`, `dataset_flickr30k.json` (Karpathy) | `{"images": [{"filepath"?, "filename", "split", "sentences": [{"raw"}], "cocoid"?}]}` | `cocoid`, else the file name's stem |
| `results_20130124.token`, `Flickr8k.token.txt` | `name.jpg#k<TAB>caption` | the file name's stem |
| Kaggle `results.csv` | `image_name| comment_number| comment` | the file name's stem |

One id rule (`image_id`) for COCO everywhere: a COCO file name (`COCO_val2014_000000397133.jpg`,
`000000397133.jpg`) means COCO's integer `image_id`, written "397133", so references and predictions from a
COCO folder, an annotation file, a Karpathy file or a results file all match. Other file names mean their
stem (Flickr30k's "1000092795.jpg" -> "1000092795", as an image folder names it). Karpathy's `imgid` is a
position in the file, not an image id, so it is never used.

Detection is by content, not by extension: a JSON object with `images` + `annotations` is COCO, one whose
`images` carry `sentences` is Karpathy, a JSON array of `image_id` + `caption` objects is a results file;
a `.csv` whose header is Kaggle's is Kaggle's. `FORMAT:PATH` (coco:, karpathy:, flickr30k:, kaggle:,
jsonl:) names the format where a file's content does not (`hf:` names a HF dataset the same way).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

from .. import CapalignError
from ..io import _shown, atomic_write_json
from .images import IMAGE_EXTENSIONS

FORMATS = ("coco", "karpathy", "flickr30k", "kaggle", "jsonl")
KAGGLE_HEADER = ("image_name", "comment_number", "comment")
_COCO_NAME = re.compile(r"(?:COCO_[A-Za-z]+\d{4}_)?(\d{12})")


def _named(s: str) -> bool:
    """Whether `s` ends in an image file extension."""
    stem, dot, ext = s.rsplit("/", 1)[-1].rpartition(".")
    return bool(dot and stem) and f".{ext.lower()}" in IMAGE_EXTENSIONS


def coco_image_id(value) -> str | None:
    """COCO's image_id of a COCO file name or path ("val2014/COCO_val2014_000000397133.jpg", "000000397133"), else None."""
    if not isinstance(value, str):
        return None
    base = value.rsplit("/", 1)[-1]
    m = _COCO_NAME.fullmatch(base.rsplit(".", 1)[0] if _named(base) else base)
    return str(int(m[1])) if m else None


def image_id(value) -> str:
    """The id of an image named `value`: COCO's image_id for a COCO file name, the path without its
    extension for another image file name ("1000092795.jpg" -> "1000092795"), else `value` as a string."""
    s = str(value)
    coco = coco_image_id(s)
    return coco if coco is not None else s.rsplit(".", 1)[0] if _named(s) else s


def split_format(spec: str) -> tuple[str | None, str]:
    """`karpathy:data/x.json` -> ("karpathy", "data/x.json"); anything else -> (None, spec)."""
    head, sep, rest = str(spec).partition(":")
    return (head, rest) if sep and head in FORMATS else (None, str(spec))


def _load_json(path: Path):
    try:
        with open(path, encoding="utf-8-sig") as f:
            return json.load(f)
    except UnicodeDecodeError as e:
        raise CapalignError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); save the file as UTF-8") from None
    except ValueError as e:
        raise CapalignError(f"{path}: invalid JSON ({getattr(e, 'msg', e)}, line {getattr(e, 'lineno', '?')})") from None


def sniff(path: Path) -> str:
    """The format of a caption file: coco, karpathy, results (COCO results), flickr30k, kaggle or jsonl.
    JSON objects are told apart by the keys at their head (a Karpathy file's first image has `sentences`;
    COCO's files open with info / licenses / images); only an unclear head makes us parse the whole file."""
    with open(path, "rb") as f:
        head = f.read(8192).decode("utf-8", "replace").lstrip("\ufeff \t\r\n")
    first = head.split("\n", 1)[0]
    if head.startswith("["):
        return "results"
    if re.match(r"[^\t#]+\.(jpe?g|png)#\d+\t", first, re.I):
        return "flickr30k"
    if tuple(c.strip() for c in first.split("|")) == KAGGLE_HEADER:
        return "kaggle"
    if not head.startswith("{") or '"images"' not in head and path.suffix.lower() != ".json":
        return "jsonl"
    if '"images"' in head and '"sentences"' in head:
        return "karpathy"
    if '"images"' in head and ('"annotations"' in head or '"file_name"' in head or '"licenses"' in head):
        return "coco"
    obj = _load_json(path) if path.suffix.lower() == ".json" else None
    if isinstance(obj, dict) and isinstance(obj.get("images"), list):
        return "coco" if "annotations" in obj else "karpathy"
    return "jsonl"


# ---------------------------------------------------------------------------------------- readers
# Each returns rows (id, image file relative to its root, captions) in the file's order.

Row = tuple[str, str, list[str]]


def _int_id(v, where: str) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, str)) or not str(v).strip():
        raise CapalignError(f"{where}: must be an integer (or a string) id, got {_shown(v)}")
    return str(v)


def _caption(v, where: str) -> str:
    if not isinstance(v, str):
        raise CapalignError(f"{where}: must be a string, got {_shown(v)}")
    return v


def read_coco(path: Path) -> list[Row]:
    """A COCO captions annotation file. Images without a caption are left out (they cannot be scored); an
    annotation whose `image_id` is not among `images` is an error (the file is not one COCO split)."""
    obj = _load_json(path)
    if not isinstance(obj, dict) or not isinstance(obj.get("images"), list) or not isinstance(obj.get("annotations"), list):
        raise CapalignError(f"{path}: not a COCO annotation file (expected an object with 'images' and 'annotations' lists)")
    names: dict[str, str] = {}
    for k, im in enumerate(obj["images"]):
        if not isinstance(im, dict) or "id" not in im:
            raise CapalignError(f"{path}: images[{k}] has no 'id'")
        names[_int_id(im["id"], f"{path}: images[{k}].id")] = str(im.get("file_name") or "")
    caps: dict[str, list[str]] = {}
    for k, a in enumerate(obj["annotations"]):
        if not isinstance(a, dict) or "image_id" not in a or "caption" not in a:
            raise CapalignError(f"{path}: annotations[{k}] needs 'image_id' and 'caption' (a captions file, not instances?)")
        i = _int_id(a["image_id"], f"{path}: annotations[{k}].image_id")
        if i not in names:
            raise CapalignError(f"{path}: annotations[{k}] has image_id {i}, which is not among the file's {len(names)} images; "
                                "the annotations and images do not belong together")
        caps.setdefault(i, []).append(_caption(a["caption"], f"{path}: annotations[{k}].caption"))
    return [(i, n, caps[i]) for i, n in names.items() if i in caps]


def karpathy_splits(path: Path) -> dict[str, list[Row]]:
    """A Karpathy split file -> {split: rows}; the image file is `filepath/filename` (COCO) or `filename`."""
    obj = _load_json(path)
    out: dict[str, list[Row]] = {}
    for k, im in enumerate(obj.get("images", []) if isinstance(obj, dict) else []):
        where = f"{path}: images[{k}]"
        if not isinstance(im, dict) or not isinstance(im.get("filename"), str) or not isinstance(im.get("sentences"), list):
            raise CapalignError(f"{where} needs 'filename' and a 'sentences' list (a Karpathy split file)")
        caps = [_caption(s.get("raw") if isinstance(s, dict) else s, f"{where}.sentences[{j}].raw") for j, s in enumerate(im["sentences"])]
        rid = _int_id(im["cocoid"], f"{where}.cocoid") if "cocoid" in im else image_id(im["filename"])
        file = f"{im['filepath']}/{im['filename']}" if im.get("filepath") else im["filename"]
        out.setdefault(str(im.get("split", "")), []).append((rid, file, caps))
    if not out:
        raise CapalignError(f"{path}: no images (expected a Karpathy split file: {{\"images\": [{{\"filename\", \"split\", \"sentences\"}}]}})")
    return out


def pick_split(splits: dict[str, list], split: str | None, default: str | None, what: str,
               flag: str = "--split (data.test_split in a study recipe)") -> tuple[str, list]:
    """The rows of `split` ("a+b" joins splits), or of the one split there is, or of `default` when there are several."""
    listed = ", ".join(f"{s} ({len(r)})" if len(r) else s for s, r in splits.items())
    name = split or (next(iter(splits)) if len(splits) == 1 else default if default in splits else None)
    if name is None:
        raise CapalignError(f"{what} holds several splits: {listed}; choose one with {flag}")
    missing = [s for s in name.split("+") if s not in splits]
    if missing:
        raise CapalignError(f"{what} has no split {missing[0]!r}; its splits: {listed}")
    return name, [r for s in name.split("+") for r in splits[s]]


def read_token(path: Path) -> list[Row]:
    """Flickr30k's results_20130124.token (and Flickr8k.token.txt): `name.jpg#k<TAB>caption`."""
    from .flickrstyle import read_flickr30k_captions

    return [(image_id(n), n, caps) for n, caps in read_flickr30k_captions(path).items()]


def read_kaggle(path: Path) -> list[Row]:
    """Kaggle's Flickr30k results.csv: `image_name| comment_number| comment`, one caption per line. A line
    whose comment lost its `|` ("x.jpg| 4   A dog runs ...", as in the Kaggle copy) is read as meant."""
    caps: dict[str, list[str]] = {}
    with open(path, encoding="utf-8-sig", errors="strict") as f:
        try:
            lines = f.read().splitlines()
        except UnicodeDecodeError as e:
            raise CapalignError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})") from None
    for n, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split("|", 2)]
        if len(parts) == 2 and (m := re.fullmatch(r"(\d+)\s+(.+)", parts[1])):
            parts = [parts[0], m[1], m[2]]
        if len(parts) != 3 or not parts[0] or not parts[2]:
            raise CapalignError(f"{path} line {n}: expected 'image_name| comment_number| comment', got {line[:60]!r}")
        caps.setdefault(parts[0], []).append(parts[2])
    if not caps:
        raise CapalignError(f"{path} has no caption rows")
    return [(image_id(n), n, c) for n, c in caps.items()]


def read_results(path: Path) -> dict[str, str]:
    """A COCO results file [{"image_id", "caption"}] -> {id: caption}; a repeated image_id is an error
    (pycocoevalcap asserts one caption per image)."""
    obj = _load_json(path)
    if not isinstance(obj, list):
        raise CapalignError(f"{path}: a COCO results file is a JSON array of {{\"image_id\", \"caption\"}}, got {_shown(obj)}")
    out: dict[str, str] = {}
    for k, r in enumerate(obj):
        where = f"{path}: [{k}]"
        if not isinstance(r, dict) or "image_id" not in r or "caption" not in r:
            raise CapalignError(f"{where}: expected {{\"image_id\", \"caption\"}}, got {_shown(r)}")
        i = _int_id(r["image_id"], f"{where}.image_id")
        if i in out:
            raise CapalignError(f"{path}: image_id {i} appears twice; a results file has one caption per image")
        out[i] = _caption(r["caption"], f"{where}.caption")
    if not out:
        raise CapalignError(f"results file {path} has no rows")
    return out


def write_results(path: str | Path, rows: Iterator[dict]) -> int:
    """{"id", "caption"} rows -> a COCO results file, written atomically. Decimal ids become integers (COCO's
    image_id, as loadRes compares them); others ("000001", "a/b") stay strings, so every id reads back the same."""
    out = [{"image_id": int(r["id"]) if r["id"].isdigit() and str(int(r["id"])) == r["id"] else r["id"], "caption": r["caption"]}
           for r in rows]
    atomic_write_json(path, out)
    return len(out)


# ----------------------------------------------------------------------------------- dispatchers

def image_roots(path: Path, split_name: str = "") -> list[Path]:
    """Where the images of a caption file usually are: COCO's `annotations/captions_val2017.json` beside
    `val2017/`; Karpathy's `dataset_coco.json` beside `train2014/` + `val2014/`; Flickr30k's folders."""
    near = [path.parent, path.parent.parent]
    names = [split_name] if split_name else []
    names += ["images", "flickr30k-images", "flickr30k_images", "flickr30k_images/flickr30k_images", "Flicker8k_Dataset", "Images"]
    return [b / n for b in near for n in names] + near


def caption_rows(path: Path, fmt: str, split: str | None, default_split: str | None) -> tuple[list[Row], str]:
    """(rows, COCO split name) of one split of a caption file in one of the formats above."""
    if fmt == "coco":
        if split:
            raise CapalignError(f"{path} is a COCO annotation file, which holds one split; drop --split {split}")
        m = re.match(r"captions_(\w+?)\.json$", path.name)
        return read_coco(path), m[1] if m else ""
    if fmt == "karpathy":
        return pick_split(karpathy_splits(path), split, default_split, f"Karpathy file {path}")[1], ""
    if split:
        raise CapalignError(f"{path} has no splits (only HF datasets and Karpathy files do); drop --split {split}")
    return (read_token(path) if fmt == "flickr30k" else read_kaggle(path)), ""


def resolve_root(path: Path, rows: list[Row], split_name: str, image_root: str | None) -> Path | None:
    """The folder under which the first image of `rows` exists (None if none of the usual ones has it)."""
    roots = [Path(image_root).expanduser()] if image_root else image_roots(path, split_name)
    return next((r for r in roots if rows and (r / rows[0][1]).is_file()), None)
