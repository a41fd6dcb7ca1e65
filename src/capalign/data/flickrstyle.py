"""FlickrStyle10K as distributed, read safely.

Layout (Gan et al. 2017, StyleNet): `humor/funny_train.txt` and `romantic/romantic_train.txt` hold one
stylised caption per line, aligned line by line with `humor/train.p` / `romantic/train.p`, a pickled
list of Flickr30k image file names ("1000268201_693b08cb0e.jpg": Flickr id, underscore, secret). The
factual captions come from Flickr30k's `results_20130124.token` ("1000268201.jpg#0<TAB>caption"), the
images from Flickr30k's image folder ("1000268201.jpg"). Names are matched as given, then by the Flickr
id alone. Caption files are UTF-8 with a Latin-1 fallback per line (romantic_train.txt is not clean UTF-8).

The pickled list is user-supplied, and unpickling can run arbitrary code (a REDUCE of os.system), so it
is never given to `pickle.load` as is: `read_name_list` first walks its opcodes with `pickletools`
(which executes nothing) and refuses anything but the opcodes of a list of strings, then unpickles
with an Unpickler that refuses every global.
"""

from __future__ import annotations

import io
import pickle
import pickletools
from pathlib import Path

from .. import CapalignError

STYLE_DIRS = {"humor": ("humorous", "funny_train.txt"), "romantic": ("romantic", "romantic_train.txt")}
# Exactly what a pickled list of str (Python 2 str or unicode, Python 3 str; any protocol) needs.
_LIST_OF_STRINGS = {"PROTO", "FRAME", "STOP", "MARK", "EMPTY_LIST", "LIST", "APPEND", "APPENDS", "STRING", "BINSTRING",
                    "SHORT_BINSTRING", "UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "PUT", "BINPUT",
                    "LONG_BINPUT", "MEMOIZE", "GET", "BINGET", "LONG_BINGET"}


class _NoGlobals(pickle.Unpickler):
    def find_class(self, module, name):  # never reached after the opcode check; a second lock on the door
        raise pickle.UnpicklingError(f"global {module}.{name} refused")


def read_name_list(path: str | Path) -> list[str]:
    """A pickled list of strings, loaded without executing any pickle code; anything else -> one-line error."""
    path = Path(path)
    data = path.read_bytes()
    try:
        for op, _, pos in pickletools.genops(data):
            if op.name not in _LIST_OF_STRINGS:
                raise CapalignError(f"refusing to unpickle {path}: opcode {op.name} at byte {pos} is not part of a plain "
                                    "list of strings (only a list of image file names is accepted; nothing was executed)")
        names = _NoGlobals(io.BytesIO(data), encoding="utf-8").load()
    except CapalignError:
        raise
    except Exception as e:  # truncated or not a pickle at all
        raise CapalignError(f"cannot read {path} as a pickled list of image names: {' '.join(str(e).split())[:200]}") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise CapalignError(f"{path} holds a {type(names).__name__}, not a list of image file names")
    return names


def read_lines(path: Path) -> list[str]:
    """Caption lines (UTF-8, else Latin-1 per line), trailing empty lines dropped."""
    lines = [(b.decode("utf-8") if _utf8(b) else b.decode("latin-1")).strip() for b in path.read_bytes().split(b"\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def read_flickr30k_captions(path: Path) -> dict[str, list[str]]:
    """`name.jpg#k<TAB>caption` lines -> {name.jpg: [caption_0, caption_1, ...]} (ordered by k)."""
    caps: dict[str, dict[int, str]] = {}
    for line in read_lines(path):
        key, tab, text = line.partition("\t")
        name, _, k = key.partition("#")
        if tab and name and k.isdigit() and text.strip():
            caps.setdefault(name.strip(), {})[int(k)] = text.strip()
    if not caps:
        raise CapalignError(f"{path} has no 'name.jpg#k<TAB>caption' lines; expected Flickr30k's results_20130124.token")
    return {n: [c[k] for k in sorted(c)] for n, c in caps.items()}


def is_flickrstyle(root: Path) -> bool:
    return any((root / d / "train.p").is_file() for d in STYLE_DIRS)


def _find(root: Path, given: str | None, names: tuple[str, ...], what: str, flag: str, is_dir: bool) -> Path:
    if given:
        p = Path(given).expanduser()
        if not (p.is_dir() if is_dir else p.is_file()):
            raise CapalignError(f"{what} not found: {p}")
        return p
    for base in (root, root.parent):
        for n in names:
            for p in sorted(base.glob(n)):
                if p.is_dir() if is_dir else p.is_file():
                    return p
    raise CapalignError(f"no {what} found beside {root}; pass {flag}")


def _flickr_id(name: str) -> str:
    stem, dot, ext = name.rpartition(".")
    return stem.split("_")[0] + dot + ext  # 1000268201_693b08cb0e.jpg -> 1000268201.jpg


def flickrstyle_pairs(root: Path, captions: str | None = None, images: str | None = None, factual_index: int = 0):
    """One pair per line of each style file: chosen = the stylised caption, rejected = the image's Flickr30k
    caption #factual_index, references = all its Flickr30k captions. Lines that cannot be paired are
    returned marked `meta["skip"]` with the reason (open_preferences lists them)."""
    from .pairs import Pair

    token = _find(root, captions, ("results_20130124.token", "*.token", "*/results_20130124.token"), "Flickr30k caption file",
                  "flickr_captions=PATH (results_20130124.token)", False)
    folder = _find(root, images, ("flickr30k-images", "flickr30k_images", "images", "Images", "*/flickr30k-images"),
                    "Flickr30k image folder", "flickr_images=DIR", True)
    factual = read_flickr30k_captions(token)
    pairs = []
    for d, (style, fname) in STYLE_DIRS.items():
        if not (root / d / "train.p").is_file():
            continue
        names = read_name_list(root / d / "train.p")
        txt = root / d / fname
        if not txt.is_file():
            others = sorted((root / d).glob("*.txt"))
            if len(others) != 1:
                raise CapalignError(f"no caption file {txt} (expected the FlickrStyle10K file {d}/{fname})")
            txt = others[0]
        lines = read_lines(txt)
        if len(lines) != len(names):
            raise CapalignError(f"{txt} has {len(lines)} captions but {root / d / 'train.p'} lists {len(names)} images; "
                                "they must align line by line")
        seen: dict[str, int] = {}
        for name, chosen in zip(names, lines):
            fid = _flickr_id(name)
            seen[fid] = seen.get(fid, 0) + 1
            pid = f"{Path(fid).stem}-{style}" + (f"-{seen[fid]}" if seen[fid] > 1 else "")
            refs = factual.get(name) or factual.get(fid) or []
            img = folder / name if (folder / name).is_file() else folder / fid
            p = Pair(pid, img, None, chosen, refs[factual_index] if len(refs) > factual_index else "", style,
                     group=fid, references=refs, meta={"file_name": name})
            if not refs:
                p.meta["skip"] = f"no Flickr30k caption for {fid} in {token.name}"
            pairs.append(p)
    return pairs
