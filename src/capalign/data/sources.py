"""Image sources: one `open_images(spec)` for folders, manifests, HF datasets and webdataset shards.

Every source lists cheap *entries* (id, captions, meta, and a function that loads the image) and
only decodes an image when its record is consumed, so huge folders and streamed datasets work with
constant memory, and resumed runs skip done ids without touching their pixels. A bad image never
stops an iteration: it is logged once, recorded in `source.skipped` and passed over.
"""

from __future__ import annotations

import csv
import json
import logging
import posixpath
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from PIL import Image

from .. import CapalignError
from ..io import read_jsonl_rows, row_id
from .formats import (
    FORMATS,
    caption_rows,
    coco_image_id,
    image_id,
    image_roots,
    pick_split,
    resolve_root,
    sniff,
    split_format,
)
from .images import IMAGE_EXTENSIONS, BadImage, load_image

log = logging.getLogger(__name__)

IMAGE_COLUMNS = ("image", "img", "jpg", "png", "picture", "photo")
CAPTION_COLUMNS = ("captions", "caption", "answer", "sentences", "text", "sentence", "raw", "alt_text", "txt")
ID_COLUMNS = ("image_id", "cocoid", "id", "key", "__key__", "file_name", "filename", "img_id")
_EXPECTED = ("expected a folder of images, a dataset folder with manifest.jsonl, a .jsonl/.csv manifest, a COCO annotation "
             "or Karpathy split .json, a datasets save_to_disk folder, .tar shards (file, brace pattern or folder) or hf:NAME[:CONFIG]")


@dataclass
class Record:
    id: str
    image: Image.Image
    captions: list[str]
    meta: dict = field(default_factory=dict)


@dataclass
class Entry:
    """A not-yet-decoded record. `load` returns bytes, a path or a PIL image for `load_image`."""

    id: str
    load: Callable[[], object]
    captions: list[str]
    meta: dict


def as_captions(value) -> list[str]:
    """Normalise caption cells: str, JSON list in a string, list of str, or list of {"raw"/"text": ...}."""
    if value is None:
        return []
    if isinstance(value, str):
        s = value.strip()
        if s.startswith("["):
            try:
                return as_captions(json.loads(s))
            except json.JSONDecodeError:
                pass
        return [s] if s else []
    if isinstance(value, dict):
        for k in ("raw", "text", "caption", "captions", "sentence"):
            if k in value:
                return as_captions(value[k])
        return []
    if isinstance(value, (list, tuple)):
        return [c for v in value for c in as_captions(v)]
    return [str(value)]


class ImageSource:
    """Iterable of `Record`s. Subclasses implement `_entries()` (cheap, in a fixed order)."""

    def __init__(self, name: str, limit: int | None = None, max_side: int = 2048):
        self.name, self.limit, self.max_side = name, limit, max_side
        self.skipped: list[tuple[str, str]] = []

    def _entries(self) -> Iterator[Entry]:
        raise NotImplementedError

    def _known_count(self) -> int | None:
        return None

    def entries(self) -> Iterator[Entry]:
        # the limit counts entries before resume-skipping, so a resumed run covers the same items
        for i, e in enumerate(self._entries()):
            if self.limit is not None and i >= self.limit:
                return
            yield e

    def num_known(self) -> int | None:
        """Number of entries if known without a pass over the data (None for streams)."""
        n = self._known_count()
        return n if n is None or self.limit is None else min(n, self.limit)

    def __len__(self) -> int:
        n = self.num_known()
        if n is None:
            raise TypeError(f"length of {self.name} is not known (streaming source); use num_known()")
        return n

    def ids(self) -> list[str]:
        """All ids, without decoding images."""
        return [e.id for e in self.entries()]

    def skip(self, id: str, reason: str) -> None:
        self.skipped.append((id, reason))
        log.warning("skipping image %s: %s", id, reason)

    def iter(self, skip_ids: Iterable[str] | None = None) -> Iterator[Record]:
        skip = set(skip_ids or ())
        for e in self.entries():
            if e.id in skip:
                continue
            try:
                img = load_image(e.load(), self.max_side)
            except BadImage as err:
                self.skip(e.id, str(err))
                continue
            except OSError as err:  # e.g. a file vanished between listing and loading
                self.skip(e.id, f"unreadable: {err}")
                continue
            yield Record(e.id, img, e.captions, e.meta)

    def __iter__(self) -> Iterator[Record]:
        return self.iter()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, n={self.num_known()})"


def batched(records: Iterable, batch_size: int) -> Iterator[list]:
    """Yield lists of up to batch_size items (the last one may be shorter)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batch: list = []
    for r in records:
        batch.append(r)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def open_images(spec: str, *, captions_field: str = "captions", limit: int | None = None, max_side: int = 2048,
                split: str | None = None, default_split: str | None = None, streaming: bool = False,
                image_column: str | None = None, caption_column: str | None = None, id_column: str | None = None,
                image_root: str | None = None) -> ImageSource:
    """Open an image source from a spec string (see docs/data.md). `split` picks one split of a source that
    has several (HF datasets, Karpathy files; "a+b" joins two); without it, the one split there is is read,
    else `default_split` (the training commands pass "train"), else it is an error listing the splits.
    `image_root`: where the images of a COCO / Karpathy file are, when not in the usual folders."""
    fmt, spec = split_format(str(spec))
    if limit is not None and limit < 0:
        raise CapalignError(f"limit must be >= 0, got {limit}")
    cols = dict(image_column=image_column, caption_column=caption_column or None, id_column=id_column)
    common = dict(limit=limit, max_side=max_side)
    splits = dict(split=split or None, default_split=default_split)
    if spec.startswith("hf:"):
        return HFSource(spec, None, streaming=streaming, captions_field=captions_field, **splits, **cols, **common)
    if "{" in spec and ".tar" in spec:
        return TarSource(spec, expand_shards(spec), captions_field, **common)
    path = Path(spec).expanduser()
    if not path.exists():
        raise CapalignError(f"image source not found: {spec}; {_EXPECTED}")
    if path.is_file():
        suffix = path.suffix.lower()
        kind = fmt or (sniff(path) if suffix in (".json", ".jsonl", ".csv", ".txt", ".token") else None)
        if kind in ("coco", "karpathy"):
            return CaptionFileSource(path, kind, split=split, default_split=default_split, image_root=image_root, **common)
        if kind in ("flickr30k", "kaggle", "results"):
            what = "a COCO results file (predictions: --pred)" if kind == "results" else "a Flickr30k caption file (references: --refs)"
            raise CapalignError(f"{spec} is {what}, not an image source; pass the image folder as --images")
        if split:
            raise CapalignError(f"{spec} has no splits (only HF datasets and Karpathy files do); drop --split {split}")
        if fmt is not None and fmt not in ("jsonl",):
            raise CapalignError(f"{spec} is not a {fmt} file; formats: {', '.join(FORMATS)}")
        if suffix in (".jsonl", ".csv"):
            return ManifestSource(path, captions_field=captions_field, **cols, **common)
        if suffix == ".tar" or path.name.endswith((".tar.gz", ".tgz")):
            return TarSource(spec, [path], captions_field, **common)
        if suffix in IMAGE_EXTENSIONS:
            return FolderSource(path, **common)
        raise CapalignError(f"unknown image source {spec}: unsupported file type {suffix or '(none)'}; {_EXPECTED}")
    if any((path / f).is_file() for f in ("state.json", "dataset_dict.json")) and not (path / "manifest.jsonl").is_file():
        return HFSource(spec, path, streaming=False, captions_field=captions_field, **splits, **cols, **common)
    if split:
        raise CapalignError(f"{spec} has no splits (only HF datasets and Karpathy files do); drop --split {split}")
    if (path / "manifest.jsonl").is_file():
        return ManifestSource(path / "manifest.jsonl", captions_field=captions_field, **cols, **common)
    tars = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith((".tar", ".tar.gz", ".tgz")))
    if tars:
        return TarSource(spec, tars, captions_field, **common)
    return FolderSource(path, **common)


class FolderSource(ImageSource):
    """Image files under a folder (recursive, sorted); id = relative path without extension, except that a
    COCO file name (COCO_val2014_000000397133.jpg, 000000397133.jpg) is COCO's image_id "397133" (formats.py).
    An optional sidecar `<name>.txt` holds captions, one per line."""

    def __init__(self, path: Path, limit=None, max_side=2048):
        super().__init__(str(path), limit, max_side)
        root = path.parent if path.is_file() else path
        files = [path] if path.is_file() else sorted(
            p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(path).parts))  # skip .hidden/.cache
        if not files:
            raise CapalignError(f"no images found in {path} (looked recursively for {' '.join(IMAGE_EXTENSIONS)}); {_EXPECTED}")
        self.files: dict[str, Path] = {}
        for f in files:
            key = coco_image_id(f.name) or f.relative_to(root).with_suffix("").as_posix()
            if key in self.files:
                raise CapalignError(f"two images in {path} map to id {key!r} ({self.files[key].name}, {f.name}); rename one")
            self.files[key] = f

    def _known_count(self):
        return len(self.files)

    def ids(self):
        return list(self.files)[: self.limit]

    def _entries(self):
        for key, f in self.files.items():
            side = f.with_suffix(".txt")
            caps = [ln.strip() for ln in side.read_text(errors="replace").splitlines() if ln.strip()] if side.is_file() else []
            yield Entry(key, lambda f=f: f, caps, {"path": str(f)})


def read_manifest_rows(path: Path, what: str = "manifest") -> Iterator[tuple[int, dict]]:
    """(line number, row) of a .jsonl or .csv manifest (CSV: header = column names). Bytes that are not
    UTF-8, invalid JSON or CSV rows with more cells than the header are a CapalignError naming the line."""
    if path.suffix.lower() != ".csv":
        yield from read_jsonl_rows(path, what)
        return
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            for row in reader:
                if None in row:  # more cells than header columns
                    raise CapalignError(f"{path} line {reader.line_num}: {len(row) - 1 + len(row[None])} cells, but the header has {len(reader.fieldnames)} columns")
                yield reader.line_num, row
    except UnicodeDecodeError as e:
        raise CapalignError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); save the file as UTF-8") from None
    except csv.Error as e:
        raise CapalignError(f"{path}: malformed CSV: {e}") from None


class ManifestSource(ImageSource):
    """A .jsonl or .csv manifest: id, image (relative to the manifest's folder, or absolute), captions."""

    def __init__(self, path: Path, captions_field="captions", image_column=None, caption_column=None,
                 id_column=None, limit=None, max_side=2048):
        super().__init__(str(path), limit, max_side)
        idk, imk, capk = id_column or "id", image_column or "image", caption_column or captions_field
        self.rows: list[Entry] = []
        seen: dict[str, int] = {}
        for line, row in read_manifest_rows(path):
            ref = row.get(imk)
            if row.get(idk) in (None, ""):
                raise CapalignError(f"{path} line {line}: missing {idk!r}; every row needs an id and an {imk!r} path")
            rid = row_id(row, f"{path} line {line}", idk)
            if rid in seen:
                raise CapalignError(f"{path}: duplicate id {rid!r} (lines {seen[rid]} and {line}); ids must be unique")
            if not ref:
                raise CapalignError(f"{path} line {line}: missing {imk!r} (image path) for id {rid!r}")
            if not isinstance(ref, str):
                raise CapalignError(f"{path} line {line}: {imk!r} must be a path string, got {ref!r}")
            seen[rid] = line
            caps = as_captions(row.get(capk, row.get("caption")))
            meta = {k: v for k, v in row.items() if k not in (idk, imk, capk)}
            img = Path(ref) if Path(ref).is_absolute() else path.parent / ref
            self.rows.append(Entry(rid, lambda img=img: img, caps, meta))
        if not self.rows:
            raise CapalignError(f"manifest {path} has no rows; expected one row per image with {idk!r} and {imk!r}")

    def _known_count(self):
        return len(self.rows)

    def _entries(self):
        return iter(self.rows)


class CaptionFileSource(ImageSource):
    """A COCO annotation file or one split of a Karpathy file (formats.py): its images, found under
    `image_root` or the usual folder beside the file, with their captions; ids by formats.image_id's rule."""

    def __init__(self, path: Path, fmt: str, split=None, default_split=None, image_root=None, limit=None, max_side=2048):
        super().__init__(str(path), limit, max_side)
        rows, name = caption_rows(path, fmt, split, default_split)
        root = resolve_root(path, rows, name, image_root)
        if root is None:
            looked = [str(image_root)] if image_root else [str(r) for r in image_roots(path, name)]
            raise CapalignError(f"cannot find the images of {path}: {rows[0][1] if rows else '(no rows)'} is in none of "
                                f"{', '.join(looked)}; pass image_root (caption: --image_root)")
        self.rows = [Entry(i, lambda f=root / file: f, caps, {"path": str(root / file)}) for i, file, caps in rows]

    def _known_count(self):
        return len(self.rows)

    def _entries(self):
        return iter(self.rows)


def _hf_image_ref(value):
    """Undecoded datasets.Image cells are {"bytes", "path"}; others may be paths, bytes or PIL images."""
    if isinstance(value, dict):
        return value.get("bytes") or value.get("path") or b""
    return b"" if value is None else value


class HFSource(ImageSource):
    """A HF `datasets` dataset: `hf:NAME[:CONFIG]` (load_dataset) or a save_to_disk folder."""

    def __init__(self, spec, path, split=None, default_split=None, streaming=False, captions_field="captions", image_column=None,
                 caption_column=None, id_column=None, limit=None, max_side=2048):
        super().__init__(spec, limit, max_side)
        import datasets

        try:
            if path is not None:
                ds = datasets.load_from_disk(str(path))
            else:
                name, _, config = spec[3:].partition(":")
                if not split:  # the split names first (metadata only): a dataset of several is never downloaded whole
                    names = datasets.get_dataset_split_names(name, config or None)
                    split = pick_split({s: [] for s in names}, None, default_split, spec)[0]
                ds = datasets.load_dataset(name, config or None, split=split, streaming=streaming)
        except CapalignError:
            raise
        except Exception as e:  # hub, network and format errors all mean "cannot open this spec"
            raise CapalignError(f"cannot load dataset {spec}: {' '.join(str(e).split())[:300]}") from None
        if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
            split = pick_split({s: ds[s] for s in ds}, split, default_split, spec)[0]
            ds = datasets.concatenate_datasets([ds[s] for s in split.split("+")]) if "+" in split else ds[split]
        elif split and getattr(ds, "split", None) is not None and split not in (str(ds.split), default_split):
            raise CapalignError(f"{spec} holds one split, {ds.split}, not {split!r}")
        feats = ds.features or {}
        cols = list(ds.column_names or feats or next(iter(ds), {}))

        def pick(explicit, candidates, what):
            if explicit:
                if explicit not in cols:
                    raise CapalignError(f"{what} column {explicit!r} not in {spec}; columns: {', '.join(cols)}")
                return explicit
            return next((c for c in candidates if c in cols), None)

        self.image_col = pick(image_column, IMAGE_COLUMNS, "image") or next(
            (c for c in cols if isinstance(feats.get(c), datasets.Image)), None)
        if self.image_col is None:
            raise CapalignError(f"no image column in {spec}; columns: {', '.join(cols)}; pass --image_column")
        if isinstance(feats.get(self.image_col), datasets.Image):
            # decode ourselves: a corrupt image then becomes one skipped record, not a crashed loop
            ds = ds.cast_column(self.image_col, datasets.Image(decode=False))
        self.ds, self.streaming = ds, isinstance(ds, datasets.IterableDataset)
        first = _first_row(ds, [c for c in cols if c != self.image_col])
        # the caption column: the one named, which must hold text, or the first common name that does
        text = [c for c in (captions_field, *CAPTION_COLUMNS) if c in cols and _text_column(feats.get(c), first.get(c)) is None]
        self.caption_col = pick(caption_column, text, "caption")
        if caption_column and (got := _text_column(feats.get(caption_column), first.get(caption_column))):
            raise CapalignError(f"caption column {caption_column!r} of {spec} holds {got}, not text (strings or lists of strings)")
        # a column of COCO file names is the id (lmms-lab's COCO sets keep it in `question_id`), by formats.image_id
        coco = next((c for c in ("question_id", *ID_COLUMNS) if c in cols and coco_image_id(first.get(c)) is not None), None)
        self.id_col = coco if coco and not id_column else pick(id_column, ID_COLUMNS, "id")
        self._id = image_id

    def _known_count(self):
        return None if self.streaming else len(self.ds)

    def ids(self):
        if self.streaming:
            return super().ids()
        n = len(self.ds) if self.limit is None else min(self.limit, len(self.ds))
        if self.id_col is None:
            return [str(i) for i in range(n)]
        return [self._id(v) for v in self.ds.select(range(n)).select_columns([self.id_col])[self.id_col]]

    def _entries(self):
        own = {self.image_col, self.caption_col, self.id_col}
        for i, row in enumerate(self.ds):
            rid = self._id(row[self.id_col]) if self.id_col else str(i)
            caps = as_captions(row.get(self.caption_col)) if self.caption_col else []
            ref = _hf_image_ref(row[self.image_col])
            yield Entry(rid, lambda ref=ref: ref, caps, {k: v for k, v in row.items() if k not in own})


def _first_row(ds, cols: list[str]) -> dict:
    """The first row's cells of `cols` (images left out: cheap), {} for an empty dataset."""
    import datasets

    if not cols:
        return {}
    if isinstance(ds, datasets.IterableDataset):
        return next(iter(ds.select_columns(cols)), {})
    return ds.select_columns(cols)[0] if len(ds) else {}


def _text_column(feature, value) -> str | None:
    """None if a column holds text (strings, lists of them, Karpathy-style [{"raw": ...}]), else what it holds."""
    import datasets

    inner = getattr(feature, "feature", feature)  # List / Sequence -> their element
    if isinstance(inner, dict):  # a list of structs: Karpathy's sentences
        inner = inner.get("raw") or inner.get("text") or inner.get("caption")
    if isinstance(inner, datasets.Value):
        return None if inner.dtype in ("string", "large_string") else inner.dtype
    return None if value is None or _is_text(value) else type(value).__name__


def _is_text(value) -> bool:
    """Whether a cell is text the way as_captions reads it (a str, or lists / {"raw"} dicts of str)."""
    if isinstance(value, str):
        return True
    if isinstance(value, dict):
        return any(_is_text(value[k]) for k in ("raw", "text", "caption") if k in value)
    if isinstance(value, (list, tuple)):
        return all(_is_text(v) for v in value)
    return False


def expand_shards(pattern: str) -> list[Path]:
    """`shards-{000..009}.tar` -> the list of paths (each must exist)."""
    from braceexpand import braceexpand  # a webdataset dependency

    paths = [Path(p).expanduser() for p in braceexpand(pattern)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise CapalignError(f"shard not found: {missing[0]} ({len(missing)} of {len(paths)} missing from {pattern})")
    return paths


def _no_image(exts: list[str]) -> Callable[[], object]:
    def load():
        raise BadImage(f"no image member in sample (members: {', '.join(exts) or 'none'})")
    return load


_TAR_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")


class TarSource(ImageSource):
    """Webdataset-style shards read with stdlib `tarfile` in streaming mode ("r|*"): members sharing a
    key (path up to the first dot of the basename) form one sample."""

    def __init__(self, name, shards, captions_field="captions", limit=None, max_side=2048):
        super().__init__(str(name), limit, max_side)
        self.shards, self.captions_field, self._count = [Path(s) for s in shards], captions_field, None

    @staticmethod
    def _split(member: str) -> tuple[str, str]:
        d, base = posixpath.split(member[2:] if member.startswith("./") else member)
        stem, _, ext = base.partition(".")
        return posixpath.join(d, stem), ext.lower()

    def _samples(self, shard: Path, read: bool = True) -> Iterator[tuple[str, dict]]:
        key, parts = None, {}
        # streaming mode reads each byte once (works for .tar.gz and pipes); headers-only mode seeks
        with tarfile.open(shard, "r|*" if read else "r:*") as tf:
            for m in tf:
                if not m.isfile() or posixpath.basename(m.name).startswith("."):
                    continue
                k, ext = self._split(m.name)
                if k != key:
                    if key is not None:
                        yield key, parts
                    key, parts = k, {}
                parts[ext] = tf.extractfile(m).read() if read else None
        if key is not None:
            yield key, parts

    def _keys(self) -> Iterator[tuple[Path, str, dict]]:
        for shard in self.shards:
            try:
                for key, parts in self._samples(shard):
                    yield shard, key, parts
            except (tarfile.TarError, EOFError, OSError) as e:
                self.skip(shard.name, f"corrupt or truncated tar, rest of shard skipped: {e}")

    def _scan_keys(self) -> list[str]:
        out: list[str] = []
        for shard in self.shards:
            try:
                out += [k for k, _ in self._samples(shard, read=False)]
            except (tarfile.TarError, EOFError, OSError):
                pass  # reported when the records are iterated
        return out

    def ids(self):
        return self._scan_keys()[: self.limit]

    def _known_count(self):
        if self._count is None and all(s.suffix == ".tar" for s in self.shards):
            self._count = len(self._scan_keys())  # headers only: seeks over member data; cached
        return self._count

    def _entries(self):
        for shard, key, parts in self._keys():
            img = next((parts[e] for e in _TAR_IMAGE_EXTS if e in parts), None)
            meta: dict = {"shard": shard.name}
            caps: list[str] = []
            if "json" in parts:
                try:
                    j = json.loads(parts["json"])
                except ValueError:
                    j = None
                if isinstance(j, dict):
                    caps = as_captions(j.get(self.captions_field))
                    meta.update({k: v for k, v in j.items() if k not in (self.captions_field, "id")})
                    caps = caps or as_captions(next((j[c] for c in CAPTION_COLUMNS if c in j and "txt" not in parts), None))
            if not caps and "txt" in parts:
                caps = [ln.strip() for ln in parts["txt"].decode("utf-8", "replace").splitlines() if ln.strip()]
            yield Entry(key, (lambda img=img: img) if img is not None else _no_image(sorted(parts)), caps, meta)
