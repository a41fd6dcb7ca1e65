"""File input and output: atomic writes and whole-line JSONL appends (a crash never leaves a partial
file or line), and the one validating reader of caption and reference JSONL files.

Every problem with a file the user gave (missing, a folder, not UTF-8, invalid JSON, a row of the wrong
shape or type, a repeated id) is a `CapalignError` naming the file, the line and the field, which the
CLI prints as one `error:` line. A write that fails (no permission, disk full, a file where a folder
should be) is a `CapalignError` naming the output path.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from . import CapalignError


def check_writable(path: str | Path, what: str = "--out") -> None:
    """Fail early, before any work, when `path` cannot be created: its nearest existing ancestor must be
    a folder we may write into, and one where a folder (or the file) can really be created. Leaves nothing
    behind (the probe entry is removed at once)."""
    p = Path(path).expanduser().absolute()
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise CapalignError(f"cannot write {what} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CapalignError(f"cannot write {what} {path}: folder {parent} is not writable")
    # os.access says yes to root everywhere, also where nothing can be created (/proc, /sys, some mounts):
    # create and remove one temporary entry there, the kind the command will create (a folder or a file)
    try:
        if parent != p.parent:
            os.rmdir(tempfile.mkdtemp(dir=parent, prefix=".capalign-check-"))
        else:
            fd, tmp = tempfile.mkstemp(dir=parent, prefix=".capalign-check-")
            os.close(fd)
            os.unlink(tmp)
    except OSError as e:
        raise CapalignError(f"cannot write {what} {path}: nothing can be created in {parent} ({e.strerror or e})") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()  # read once at import (os.umask can only be read by setting it)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs get the usual permissions, as open() would give
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):  # permissions, disk full, a file where a folder should be
            raise CapalignError(f"cannot write {path}: {e.strerror or e}") from e
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def read_jsonl(path: str | Path) -> Iterator[dict]:
    """Yield the complete records of a JSONL file that capalign wrote itself; a torn last line (no
    newline) is ignored. Files from users go through `read_jsonl_rows` (validated, line-numbered)."""
    with open(path, "rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break
            if raw.strip():
                yield json.loads(raw)


class JsonlAppender:
    """Append records to a JSONL file, each line in one write() call, so lines are whole.

    On open, a torn trailing line left by a crash is cut off, so resumed runs append cleanly.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists():
                data = self.path.read_bytes()
                keep = data.rfind(b"\n") + 1
                if keep != len(data):
                    with open(self.path, "r+b") as f:
                        f.truncate(keep)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as e:
            raise CapalignError(f"cannot write {path}: {e.strerror or e}") from e

    def write(self, records: Iterable[dict]) -> None:
        payload = b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in records)
        if payload:
            os.write(self._fd, payload)
            os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------------
# validated JSONL input: caption files {"id", "caption"} and reference files {"id", "captions", ...}
# ---------------------------------------------------------------------------------------------------
_JSON_TYPES = {str: "a string", int: "a number", float: "a number", bool: "a boolean", list: "a list", dict: "an object", type(None): "null"}


def _shown(v: Any) -> str:
    """A short rendering of a bad value for an error message: `"a dog" (a string)`."""
    text = json.dumps(v, ensure_ascii=False, default=str)
    return f"{text[:40] + '...' if len(text) > 40 else text} ({_JSON_TYPES.get(type(v), type(v).__name__)})"


def read_jsonl_rows(path: str | Path, what: str = "JSONL file", torn_ok: bool = False) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line of a JSONL file. A missing file, a folder, bytes
    that are not UTF-8, invalid JSON or a line that is not a JSON object is a CapalignError naming the
    file and line. torn_ok: a last line without a newline (a write torn by a crash, which JsonlAppender
    cuts on the next open) is ignored instead of parsed."""
    p = Path(path)
    if not p.exists():
        raise CapalignError(f"{what} not found: {p}")
    if not p.is_file():
        raise CapalignError(f"{what} {p} is not a file (a folder?); expected a .jsonl file")
    with open(p, "rb") as f:
        for n, raw in enumerate(f, 1):
            last = not raw.endswith(b"\n")
            if last and torn_ok:
                return
            try:
                text = raw.decode("utf-8-sig" if n == 1 else "utf-8")  # a BOM on line 1 is tolerated
            except UnicodeDecodeError as e:
                raise CapalignError(f"{p} line {n}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                                    "save the file as UTF-8") from None
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except RecursionError:
                raise CapalignError(f"{p} line {n}: JSON nested too deeply") from None
            except ValueError as e:  # JSONDecodeError, and over-long integers
                msg = e.msg if isinstance(e, json.JSONDecodeError) else str(e).split(";")[0]
                raise CapalignError(f"{p} line {n}: invalid JSON ({msg})" + (" on the last line, which has no newline: a torn write?" if last else "")) from None
            if not isinstance(row, dict):
                raise CapalignError(f"{p} line {n}: expected a JSON object {{...}}, got {_shown(row)}")
            yield n, row


def _text(value: Any, where: str, name: str) -> str:
    if not isinstance(value, str):
        raise CapalignError(f"{where}: {name!r} must be a string, got {_shown(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise CapalignError(f"{where}: {name!r} holds a lone surrogate escape (\\ud800-\\udfff), which is not text") from None
    return value


def row_id(row: dict, where: str, key: str = "id") -> str:
    """A row's id as a string: a JSON string or integer (1 and "1" are the same id); anything else is an error."""
    if key not in row:
        raise CapalignError(f"{where}: missing {key!r}")
    v = row[key]
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise CapalignError(f"{where}: {key!r} must be a string or an integer, got {_shown(v)}")
    if isinstance(v, str) and not v.strip():
        raise CapalignError(f"{where}: {key!r} is empty")
    return _text(str(v), where, key)


def check_prediction(row: dict, where: str) -> tuple[str, str]:
    """(id, caption) of a caption row {"id": str|int, "caption": str}; "" is a valid (empty) caption."""
    pid = row_id(row, where)
    if "caption" not in row:
        raise CapalignError(f"{where}: missing 'caption' (rows are {{\"id\": ..., \"caption\": \"...\"}})")
    return pid, _text(row["caption"], where, "caption")


def check_reference(row: dict, where: str) -> dict:
    """{"captions", "objects", "image"} of a reference row: `captions` a non-empty list of strings,
    optional `objects` a list of "red circle" strings or {"name": str, "attributes": [str]} objects,
    optional `image` a path string. Other keys are ignored."""
    caps = row.get("captions")
    if not isinstance(caps, list) or not caps:
        got = "nothing" if "captions" not in row else _shown(caps)
        raise CapalignError(f"{where}: 'captions' must be a non-empty list of strings, got {got}")
    caps = [_text(c, where, f"captions[{k}]") for k, c in enumerate(caps)]
    objects = row.get("objects")
    if objects is not None:
        if not isinstance(objects, list):
            raise CapalignError(f"{where}: 'objects' must be a list, got {_shown(objects)}")
        for k, o in enumerate(objects):
            if isinstance(o, dict):
                _text(o.get("name"), where, f"objects[{k}].name")
                attrs = o.get("attributes", [])
                if not isinstance(attrs, list):
                    raise CapalignError(f"{where}: 'objects[{k}].attributes' must be a list of strings, got {_shown(attrs)}")
                for j, a in enumerate(attrs):
                    _text(a, where, f"objects[{k}].attributes[{j}]")
            else:
                _text(o, where, f"objects[{k}]")
    image = row.get("image")
    if image is not None:
        _text(image, where, "image")
    return {"captions": caps, "objects": objects, "image": image}


def _unique(rows: Iterable[tuple[str, int, Any]], path: str | Path, what: str) -> dict[str, Any]:
    """{id: value} of (id, line, value) rows; a repeated id or no row at all is an error."""
    out, line = {}, {}
    for key, n, value in rows:
        if key in line:
            raise CapalignError(f"{path}: duplicate id {key!r} (lines {line[key]} and {n}); every id must appear once, "
                                "so it is not clear which row to use")
        out[key], line[key] = value, n
    if not out:
        raise CapalignError(f"{what} {path} has no rows")
    return out


def read_predictions(path: str | Path) -> dict[str, str]:
    """id -> caption of a caption JSONL file (as `capalign caption` writes), validated; a repeated id
    is an error (docs/metrics.md: scoring either row silently would bias the table)."""
    def rows():
        for n, r in read_jsonl_rows(path, "predictions file"):
            pid, cap = check_prediction(r, f"{path} line {n}")
            yield pid, n, cap

    return _unique(rows(), path, "predictions file")


def read_references(path: str | Path) -> dict[str, dict]:
    """id -> {"captions", "objects", "image"} of a reference JSONL file (a shapes-world manifest.jsonl
    works), validated; a repeated id is an error."""
    def rows():
        for n, r in read_jsonl_rows(path, "references file"):
            yield row_id(r, f"{path} line {n}"), n, check_reference(r, f"{path} line {n}")

    return _unique(rows(), path, "references file")
