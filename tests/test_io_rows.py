"""The one validating reader of caption / reference JSONL files (io.py) and `capalign evaluate` on bad rows
(issue 10, defect 3: wrong types were scored, duplicate ids dropped silently; defect 4: non-UTF-8 bytes
gave a traceback). A property-based fuzz checks "a clear CapalignError or the correct parse", nothing else."""

import json

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from capalign import CapalignError
from capalign.io import read_jsonl_rows, read_predictions, read_references

REFS = [{"id": "1", "captions": ["a red circle", "one red circle"]}, {"id": "2", "captions": ["a blue square"]}]
PREDS = [{"id": "1", "caption": "a red circle"}, {"id": "2", "caption": "a square"}]


def _jsonl(path, rows, end="\n"):
    path.write_bytes("".join(json.dumps(r) + "\n" for r in rows[:-1]).encode() + (json.dumps(rows[-1]) + end).encode() if rows else b"")
    return path


def test_ids_str_or_int_blank_lines_bom_and_no_final_newline(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_bytes(b'\xef\xbb\xbf{"id": 1, "caption": "a"}\n\n  \n{"id": "x", "caption": ""}')  # BOM, blanks, no final newline
    assert read_predictions(p) == {"1": "a", "x": ""}  # the last row counts even without a newline
    r = tmp_path / "r.jsonl"
    _jsonl(r, [{"id": 7, "captions": ["c"], "objects": ["red circle", {"name": "square", "attributes": ["blue"]}], "image": "i.png", "extra": 1}])
    assert read_references(r) == {"7": {"captions": ["c"], "objects": ["red circle", {"name": "square", "attributes": ["blue"]}], "image": "i.png"}}


@pytest.mark.parametrize("reader,content,fragment", [
    (read_predictions, b'{"id": "1", "caption": 5}\n', "line 1: 'caption' must be a string, got 5 (a number)"),
    (read_predictions, b'{"id": "1"}\n', "line 1: missing 'caption'"),
    (read_predictions, b'{"caption": "a"}\n', "line 1: missing 'id'"),
    (read_predictions, b'{"id": 1.5, "caption": "a"}\n', "'id' must be a string or an integer, got 1.5"),
    (read_predictions, b'{"id": true, "caption": "a"}\n', "'id' must be a string or an integer, got true (a boolean)"),
    (read_predictions, b'{"id": " ", "caption": "a"}\n', "'id' is empty"),
    (read_predictions, b'{"id": "1", "caption": "a"}\n{"id": "2", "caption": "b"}\n{"id": 1, "caption": "c"}\n',
     "duplicate id '1' (lines 1 and 3)"),
    (read_predictions, b'{"id": "1", "caption": "a"}\n["1", "a"]\n', "line 2: expected a JSON object {...}, got [\"1\", \"a\"] (a list)"),
    (read_predictions, b'{"id": "1", "caption": "a"\n', "line 1: invalid JSON"),
    (read_predictions, b'{"id": "1", "caption": "a"}\n{"id": "2", "capt', "line 2: invalid JSON (Unterminated string"),
    (read_predictions, b'{"id": "1", "caption": "caf\xe9"}\n', "line 1: not UTF-8 text (byte 0xe9"),
    (read_predictions, b'{"id": "1", "caption": "\\ud800"}\n', "lone surrogate"),
    (read_predictions, b"\n\n", "has no rows"),
    (read_references, b'{"id": "1", "captions": "a dog"}\n', "line 1: 'captions' must be a non-empty list of strings, got \"a dog\" (a string)"),
    (read_references, b'{"id": "1", "captions": []}\n', "'captions' must be a non-empty list of strings, got [] (a list)"),
    (read_references, b'{"id": "1"}\n', "'captions' must be a non-empty list of strings, got nothing"),
    (read_references, b'{"id": "1", "captions": ["a", 3]}\n', "'captions[1]' must be a string, got 3"),
    (read_references, b'{"id": "1", "captions": ["a"], "objects": "red circle"}\n', "'objects' must be a list"),
    (read_references, b'{"id": "1", "captions": ["a"], "objects": [{"attributes": []}]}\n', "'objects[0].name' must be a string"),
    (read_references, b'{"id": "1", "captions": ["a"], "objects": [{"name": "c", "attributes": "red"}]}\n', "'objects[0].attributes' must be a list"),
    (read_references, b'{"id": "1", "captions": ["a"], "image": 3}\n', "'image' must be a string"),
    (read_references, b'{"id": "1", "captions": ["a"]}\n{"id": "1", "captions": ["b"]}\n', "duplicate id '1' (lines 1 and 2)"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, reader, content, fragment):
    p = tmp_path / "f.jsonl"
    p.write_bytes(content)
    with pytest.raises(CapalignError) as e:
        reader(p)
    msg = str(e.value)
    assert fragment in msg and str(p) in msg and "\n" not in msg


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(CapalignError, match="predictions file not found"):
        read_predictions(tmp_path / "nope.jsonl")
    with pytest.raises(CapalignError, match="is not a file"):
        read_references(tmp_path)


def test_torn_last_line_is_ignored_only_when_asked(tmp_path):
    p = tmp_path / "caps.jsonl"
    p.write_bytes(b'{"id": "1", "caption": "a"}\n{"id": "2", "capt')
    assert [n for n, _ in read_jsonl_rows(p, torn_ok=True)] == [1]
    with pytest.raises(CapalignError, match="line 2: invalid JSON .* no newline: a torn write"):
        list(read_jsonl_rows(p))


# ------------------------------------------------------------------------------- capalign evaluate

@pytest.mark.parametrize("which,rows,fragment", [
    ("refs", [{"id": "1", "captions": "a red circle"}, REFS[1]], "refs.jsonl line 1: 'captions' must be a non-empty list of strings"),
    ("pred", [PREDS[0], {"id": "2", "caption": 5}], "pred.jsonl line 2: 'caption' must be a string, got 5"),
    ("pred", [PREDS[0], PREDS[1], {"id": "1", "caption": "again"}], "pred.jsonl: duplicate id '1' (lines 1 and 3)"),
    ("pred", [PREDS[0], {"id": ["2"], "caption": "a"}], "pred.jsonl line 2: 'id' must be a string or an integer"),
])
def test_evaluate_refuses_wrong_types_and_duplicate_ids(tmp_path, cli, which, rows, fragment):
    """Defect 3: `"captions": "a dog"` was scored character by character, `"caption": 5` was scored,
    and a duplicate id silently dropped one row."""
    files = {"refs": _jsonl(tmp_path / "refs.jsonl", REFS), "pred": _jsonl(tmp_path / "pred.jsonl", PREDS)}
    _jsonl(files[which], rows)
    out = tmp_path / "res.json"
    r = cli("evaluate", "--pred", files["pred"], "--refs", files["refs"], "--out", out)
    assert r.code == 2 and len(r.error_lines) == 1 and fragment in r.error_lines[0], r.err
    assert "Traceback" not in r.err and not out.exists()


def test_evaluate_non_utf8_predictions(tmp_path, cli):
    """Defect 4: a prediction file that is not UTF-8 gave a UnicodeDecodeError traceback."""
    refs = _jsonl(tmp_path / "refs.jsonl", REFS)
    pred = tmp_path / "pred.jsonl"
    pred.write_bytes('{"id": "1", "caption": "un caf\u00e9"}\n'.encode("latin-1"))
    r = cli("evaluate", "--pred", pred, "--refs", refs)
    assert r.code == 2 and len(r.error_lines) == 1 and "Traceback" not in r.err
    assert f"{pred} line 1: not UTF-8 text (byte 0xe9" in r.error_lines[0]


def test_evaluate_checks_every_file_before_scoring(tmp_path, cli):
    refs = _jsonl(tmp_path / "refs.jsonl", REFS)
    good = _jsonl(tmp_path / "good.jsonl", PREDS)
    bad = _jsonl(tmp_path / "bad.jsonl", [{"id": "1", "caption": None}])
    r = cli("evaluate", "--pred", good, "--pred", bad, "--refs", refs)
    assert r.code == 2 and "bad.jsonl line 1: 'caption' must be a string, got null" in r.error_lines[0]
    assert "good:" not in r.err  # nothing was scored


# ------------------------------------------------------------------------------- property-based fuzz
# Files of valid rows with at most one damaged line: a valid row with one field replaced by any JSON
# value (or removed), random bytes or text, or a JSON edge case. The oracle is the documented format,
# written independently of io.py: the reader returns exactly what the oracle says, or raises a one-line
# CapalignError naming the file when the oracle says the file is invalid; nothing else.

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=6)
                    | st.sampled_from(["\ud800", "", " ", "1"]),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3), max_leaves=6)
GOOD_ID = st.integers(0, 10**6) | st.text(min_size=1, max_size=6).filter(str.strip)
GOOD_PRED = st.fixed_dictionaries({"id": GOOD_ID, "caption": st.text(max_size=8)})
GOOD_REF = st.fixed_dictionaries({"id": GOOD_ID, "captions": st.lists(st.text(max_size=8), min_size=1, max_size=3)}, optional={
    "objects": st.lists(st.text(max_size=8) | st.fixed_dictionaries({"name": st.text(max_size=5)}, optional={
        "attributes": st.lists(st.text(max_size=4), max_size=2)}), max_size=3), "image": st.text(max_size=5)})
REMOVE = object()
BAD_TEXT = [REMOVE, None, 0, True, 1.5, [], ["x"], {}, "\ud800"]
EDGES = {  # per field: values at the edge of the format (some valid)
    "id": BAD_TEXT + ["", " ", -1, 10**30, "1"],
    "caption": BAD_TEXT + ["", " "],
    "captions": BAD_TEXT + ["a dog", [""], ["x", None], ["\ud800"], [["x"]]],
    "objects": BAD_TEXT + ["red circle", [1], [None], [{}], [{"name": 1}], [{"name": "x", "attributes": "red"}],
                           [{"name": "x", "attributes": [1]}], [{"name": "x", "attributes": None}], [{"name": "x"}], ["\ud800"]],
    "image": BAD_TEXT + ["", "a.png"],
}


def _encode(row, ascii=False):  # ascii: "\ud800" stays an escape that json.loads turns into a lone surrogate
    return json.dumps(row, ensure_ascii=ascii).encode("utf-8")


def _damaged(good, fields):
    def mutate(args):
        row, (field, value) = args
        row = dict(row)
        if value is REMOVE:
            row.pop(field, None)
        else:
            row[field] = value
        return _encode(row, ascii=True)

    edge_mutation = st.tuples(good, st.sampled_from([(f, v) for f in fields for v in EDGES[f]])).map(mutate)
    junk = st.one_of(st.binary(max_size=12), st.text(max_size=12).map(str.encode), st.sampled_from([b"", b"   ", b"[1, 2]", b"null", b"{", b"1" * 5000, b"[" * 5000, b'{"id": 1e999}', b"\xef\xbb\xbf{}",
                         b'{"id": "x", "caption": "caf\xe9", "captions": ["caf\xe9"]}']))
    any_mutation = st.tuples(good, st.tuples(st.sampled_from(fields), JSON)).map(mutate)
    return st.one_of(*[edge_mutation] * 6, any_mutation, junk)  # hypothesis picks a branch uniformly


def _file(good, fields):
    def build(args):
        lines, bad, at = args
        return lines if bad is None else lines[:at] + [bad] + lines[at:]

    bad = _damaged(good, fields)
    return st.tuples(st.lists(good.map(_encode), max_size=4), st.none() | bad | bad | bad, st.integers(0, 4)).map(build)


def _is_text(v):
    if not isinstance(v, str):
        return False
    try:
        v.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _oracle(data: bytes, check):
    """{id: value} the format defines for this file, or None if the file is invalid."""
    out = {}
    for k, raw in enumerate(data.split(b"\n")[:-1] if data.endswith(b"\n") else data.split(b"\n")):
        try:
            text = raw.decode("utf-8-sig" if k == 0 else "utf-8")
        except UnicodeDecodeError:
            return None
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except (ValueError, RecursionError):
            return None
        if not isinstance(row, dict) or "id" not in row:
            return None
        rid = row["id"]
        if type(rid) not in (str, int) or (isinstance(rid, str) and (not rid.strip() or not _is_text(rid))) or str(rid) in out:
            return None
        value = check(row)
        if value is None:
            return None
        out[str(rid)] = value
    return out or None


def _pred_value(row):
    return row["caption"] if "caption" in row and _is_text(row["caption"]) else None


def _ref_value(row):
    caps, objs, image = row.get("captions"), row.get("objects"), row.get("image")
    if not isinstance(caps, list) or not caps or not all(_is_text(c) for c in caps):
        return None
    if objs is not None:
        if not isinstance(objs, list):
            return None
        for o in objs:
            if isinstance(o, dict):
                attrs = o.get("attributes", [])
                if not _is_text(o.get("name")) or not isinstance(attrs, list) or not all(_is_text(a) for a in attrs):
                    return None
            elif not _is_text(o):
                return None
    if image is not None and not _is_text(image):
        return None
    return {"captions": caps, "objects": objs, "image": image}


def _check(tmp_path, lines, final_newline, reader, check):
    data = b"\n".join(ln.replace(b"\n", b" ") for ln in lines) + (b"\n" if final_newline and lines else b"")
    p = tmp_path / "fuzz.jsonl"
    p.write_bytes(data)
    want = _oracle(data, check)
    try:
        got = reader(p)
    except CapalignError as e:
        event("refused")
        assert want is None, f"refused a valid file: {e}"
        assert str(p) in str(e) and "\n" not in str(e)
        return
    event("parsed")
    assert want is not None and got == want


FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@FUZZ
@given(lines=_file(GOOD_PRED, ["id", "caption"]), final_newline=st.booleans())
def test_fuzz_predictions(tmp_path, lines, final_newline):
    _check(tmp_path, lines, final_newline, read_predictions, _pred_value)


@FUZZ
@given(lines=_file(GOOD_REF, ["id", "captions", "objects", "image"]), final_newline=st.booleans())
def test_fuzz_references(tmp_path, lines, final_newline):
    _check(tmp_path, lines, final_newline, read_references, _ref_value)


def test_atomic_writes_get_the_usual_permissions(tmp_path):
    """mkstemp creates 0600 files; an output written atomically has the permissions open() would give it (0666 & ~umask)."""
    import os

    from capalign.io import atomic_write_text

    atomic_write_text(tmp_path / "a.json", "{}")
    open(tmp_path / "b.json", "w").close()
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == (tmp_path / "b.json").stat().st_mode & 0o777
    old = os.umask(0o022)  # under the common umask the difference is visible: 0644, not mkstemp's 0600
    try:
        from capalign import io

        monkey = io._UMASK
        io._UMASK = io._umask()
        atomic_write_text(tmp_path / "c.json", "{}")
        assert (tmp_path / "c.json").stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)
        io._UMASK = monkey
