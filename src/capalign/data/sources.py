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
from .images import IMAGE_EXTENSIONS, BadImage, load_image

log = logging.getLogger(__name__)

IMAGE_COLUMNS = ("image", "img", "jpg", "png", "picture", "photo")
CAPTION_COLUMNS = ("captions", "caption", "text", "sentences", "sentence", "raw", "alt_text", "txt")
ID_COLUMNS = ("id", "image_id", "key", "__key__", "file_name", "filename", "img_id")
_EXPECTED = ("expected a folder of images, a dataset folder with manifest.jsonl, a .jsonl/.csv manifest, "
             "a datasets save_to_disk folder, .tar shards (file, brace pattern or folder) or hf:NAME[:CONFIG]")


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
                split: str = "train", streaming: bool = False, image_column: str | None = None,
                caption_column: str | None = None, id_column: str | None = None) -> ImageSource:
    """Open an image source from a spec string (see docs/data.md)."""
    spec = str(spec)
    if limit is not None and limit < 0:
        raise CapalignError(f"limit must be >= 0, got {limit}")
    cols = dict(image_column=image_column, caption_column=caption_column or None, id_column=id_column)
    common = dict(limit=limit, max_side=max_side)
    if spec.startswith("hf:"):
        return HFSource(spec, None, split=split, streaming=streaming, captions_field=captions_field, **cols, **common)
    if "{" in spec and ".tar" in spec:
        return TarSource(spec, expand_shards(spec), captions_field, **common)
    path = Path(spec).expanduser()
    if not path.exists():
        raise CapalignError(f"image source not found: {spec}; {_EXPECTED}")
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in (".jsonl", ".csv"):
            return ManifestSource(path, captions_field=captions_field, **cols, **common)
        if suffix == ".tar" or path.name.endswith((".tar.gz", ".tgz")):
            return TarSource(spec, [path], captions_field, **common)
        if suffix in IMAGE_EXTENSIONS:
            return FolderSource(path, **common)
        raise CapalignError(f"unknown image source {spec}: unsupported file type {suffix or '(none)'}; {_EXPECTED}")
    if (path / "manifest.jsonl").is_file():
        return ManifestSource(path / "manifest.jsonl", captions_field=captions_field, **cols, **common)
    if any((path / f).is_file() for f in ("state.json", "dataset_dict.json")):
        return HFSource(spec, path, split=split, streaming=False, captions_field=captions_field, **cols, **common)
    tars = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith((".tar", ".tar.gz", ".tgz")))
    if tars:
        return TarSource(spec, tars, captions_field, **common)
    return FolderSource(path, **common)


class FolderSource(ImageSource):
    """Image files under a folder (recursive, sorted); id = relative path without extension.
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
            key = f.relative_to(root).with_suffix("").as_posix()
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


class ManifestSource(ImageSource):
    """A .jsonl or .csv manifest: id, image (relative to the manifest's folder, or absolute), captions."""

    def __init__(self, path: Path, captions_field="captions", image_column=None, caption_column=None,
                 id_column=None, limit=None, max_side=2048):
        super().__init__(str(path), limit, max_side)
        idk, imk, capk = id_column or "id", image_column or "image", caption_column or captions_field
        self.rows: list[Entry] = []
        seen: dict[str, int] = {}
        for line, row in self._read(path):
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

    @staticmethod
    def _read(path: Path) -> Iterator[tuple[int, dict]]:
        if path.suffix.lower() != ".csv":
            yield from read_jsonl_rows(path, "manifest")
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

    def __init__(self, spec, path, split="train", streaming=False, captions_field="captions", image_column=None,
                 caption_column=None, id_column=None, limit=None, max_side=2048):
        super().__init__(spec, limit, max_side)
        import datasets

        try:
            if path is not None:
                ds = datasets.load_from_disk(str(path))
            else:
                name, _, config = spec[3:].partition(":")
                ds = datasets.load_dataset(name, config or None, split=split, streaming=streaming)
        except Exception as e:  # hub, network and format errors all mean "cannot open this spec"
            raise CapalignError(f"cannot load dataset {spec}: {' '.join(str(e).split())[:300]}") from None
        if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
            if split not in ds:
                raise CapalignError(f"split {split!r} not in {spec}; available: {', '.join(ds)}")
            ds = ds[split]
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
        self.caption_col = pick(caption_column, (captions_field, *CAPTION_COLUMNS), "caption")
        self.id_col = pick(id_column, ID_COLUMNS, "id")
        if isinstance(feats.get(self.image_col), datasets.Image):
            # decode ourselves: a corrupt image then becomes one skipped record, not a crashed loop
            ds = ds.cast_column(self.image_col, datasets.Image(decode=False))
        self.ds, self.streaming = ds, isinstance(ds, datasets.IterableDataset)

    def _known_count(self):
        return None if self.streaming else len(self.ds)

    def ids(self):
        if self.streaming:
            return super().ids()
        n = len(self.ds) if self.limit is None else min(self.limit, len(self.ds))
        if self.id_col is None:
            return [str(i) for i in range(n)]
        return [str(v) for v in self.ds.select(range(n)).select_columns([self.id_col])[self.id_col]]

    def _entries(self):
        own = {self.image_col, self.caption_col, self.id_col}
        for i, row in enumerate(self.ds):
            rid = str(row[self.id_col]) if self.id_col else str(i)
            caps = as_captions(row.get(self.caption_col)) if self.caption_col else []
            ref = _hf_image_ref(row[self.image_col])
            yield Entry(rid, lambda ref=ref: ref, caps, {k: v for k, v in row.items() if k not in own})


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
