"""Pure-Python stand-in for the Stanford PTBTokenizer call that pycocoevalcap makes.

pycocoevalcap runs `java edu.stanford.nlp.process.PTBTokenizer -preserveLines -lowerCase`
(CoreNLP 3.4.1) and then drops the tokens in PUNCTUATIONS. We emulate the JFlex lexer:
at every position each rule is tried and the longest match wins (ties: the earlier rule),
then the rule's normalisation is applied (brackets -> -lrb-, latex quotes, currency, fractions,
n't / 's splitting, gonna -> gon na ...). The tokens are lower-cased after lexing, as Java does.

Where we depart from the Java lexer (checked against it by tests/test_metrics_coco.py):
- Only the rules that matter for captions are emulated. Not emulated: SGML with spaces inside,
  smileys, most Twitter/URL/e-mail subtleties, soft hyphens, HTML entities other than &amp;,
  the full CoreNLP abbreviation list (we keep a documented subset, see _ABBREVS).
- Characters outside the Basic Multilingual Plane (emoji ...), control characters, zero-width
  joiners and variation selectors are dropped, as the Java lexer drops them ("Untokenizable").
- Input should be NFC: decomposed accents (e + U+0301) are not handled like the Java lexer (Java
  keeps combining marks, as letters; we drop them).
Since tokens never span whitespace (except FRAC, which is harmless after split(' ')), a caption
is tokenised whitespace-chunk by whitespace-chunk with a cache: captions repeat words a lot.
The two rules that look across whitespace (FRAC "42 1/2", and a one-letter initial "A." losing its
period before a sentence starter, also on the next line) only fire when nothing the lexer drops
(emoji, zero-width or other non-splitting space ...) sits between the two chunks, as in Java.
"""

from __future__ import annotations

import re
import sys
import unicodedata

# pycocoevalcap/tokenizer/ptbtokenizer.py: tokens removed after tokenisation (case-sensitive,
# so "-lrb-" etc. survive because -lowerCase ran first).
PUNCTUATIONS = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"])


def _char_class(pred) -> str:
    """A regex class of BMP chars satisfying pred, as ranges (Java's Character.isLetter et al.)."""
    ranges, start = [], None
    for cp in range(0x10000):
        if 0xD800 <= cp <= 0xDFFF:
            ok = False
        else:
            ok = pred(chr(cp))
        if ok and start is None:
            start = cp
        if not ok and start is not None:
            ranges.append((start, cp - 1))
            start = None
    if start is not None:
        ranges.append((start, 0xFFFF))
    return "[" + "".join(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in ranges) + "]"


_L = _char_class(lambda c: unicodedata.category(c) in ("Lu", "Ll", "Lt", "Lm", "Lo"))
_D = _char_class(lambda c: unicodedata.category(c) == "Nd")
_AN = f"(?:{_L}|{_D})"
_APOS = "['\u2019]"
_APOSETC = "['\u2019`\u2018\u201b]"
_REDAUX = f"{_APOS}(?:[msdMSD]|re|ve|ll|RE|VE|LL)(?![A-Za-z])"
_SWORD = "[A-Za-z\u00aa\u00b5\u00ba\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u00ff]*[A-MO-Za-mo-z]"
_WORD = f"{_L}{_AN}*(?:[.!?]{_L}{_AN}*)*"
_THING_PART = f"(?:[dDoOlL]{_APOSETC}{_AN})?{_AN}+"
_THING = f"{_THING_PART}(?:[-_]{_THING_PART})*"
_NUM = f"[-+]?(?:{_D}*(?:[.:,]{_D}+)+|{_D}+)"
# Abbreviations whose final period stays attached (case-insensitive, like the Java rules).
_ABBREVS = "mr|mrs|ms|dr|drs|prof|st|ste|mt|ave|jr|sr|inc|co|corp|ltd|vs|etc|al|capt|sgt|gen|col|lt|rev|hon|messrs"

# (name, regex) in the lexer's rule order; for rules with trailing context the regex's group 1
# is what is consumed (JFlex counts the trailing context in the longest-match comparison).
_RULES: list[tuple[str, str]] = [
    ("sgml", r"</?[A-Za-z!?][A-Za-z0-9.\-]*>"),
    ("duckfeet", "<<|>>"),
    ("two_apos", "''"),
    ("smiley", r"[<>]?[:;=][\-o*']?[()DPdp\[\]]"),
    ("cannot", r"(?i)(can)not"),
    ("gonna", r"(?i)(gon|wan)na|(got)ta|(lem|gim)me"),
    ("nt_word", f"({_SWORD})[nN]{_APOS}[tT]"),
    ("nt", f"[nN]{_APOS}[tT]"),
    ("y_apos", f"([yY]{_APOS}){_L}+"),
    ("redaux_word", f"({_THING}){_REDAUX}"),
    ("redaux", _REDAUX),
    ("apoword", f"{_APOS}[nN]{_APOS}|(?i:{_APOS}em|{_APOS}cause|{_APOS}till?)|{_APOS}[2-9]0[sS]|{_APOS}[0-9][0-9]$|[A-HJ-XZn]{_APOSETC}{_L}{{2,}}"
     f"|{_L}*[aeiouyAEIOUY]{_APOSETC}[aeiouA-Z]{_L}*|(?i:c'mon|li'l|ol'|somethin')"),
    ("tis", f"({_APOS}t)(?:is|was)(?!{_L})"),
    ("acro", r"[A-Za-z](?:\.[A-Za-z])+\.?|[A-Za-z]\."),
    ("abbrev", f"(?i:{_ABBREVS})\\."),
    ("word", _WORD),
    ("thing", _THING),
    ("thinga", r"[A-Z]+(?:[+&][A-Z]+)+"),
    ("thing3", f"{_AN}+(?:-{_L}+){{0,2}}(?:/{_AN}+(?:-{_L}+){{0,2}}){{1,2}}"),
    ("number", _NUM),
    ("date", f"{_D}{{1,2}}[-/]{_D}{{1,2}}[-/]{_D}{{2,4}}"),
    ("frac", f"(?:{_D}{{1,4}}-)?{_D}{{1,4}}/{_D}{{1,4}}"),
    ("twitter", f"@[A-Za-z_][A-Za-z_0-9]*|#{_L}+"),
    ("email", r"[A-Za-z0-9][^\s\"<>|()@]*@(?:[^\s\"<>|().@]+\.)*[^\s\"<>|().@]+"),
    ("url", r"https?://[^\s\"<>|()]*[^\s\"<>|.!?(){},-]|www\.(?:[^\s\"<>|.!?(){},]+\.)+[a-zA-Z]{2,4}"),
    ("dolsign", r"[A-Z]*\$"),
    ("ldots", r"\.{3,5}|\u2026"),
    ("bang", r"[!?]+"),
    ("hyphens", r"-+|[\u2013\u2014\u2015]"),
    ("quotes", "[`\u2018\u2019\u201b\u201c\u201d\u00ab\u00bb\u2039\u203a]{1,2}"),
    ("runs", r"\*+|_+|#+|@+"),
    ("amp", r"(?i)&amp;"),
    ("paren_dash", r"\(--\)"),
    ("any", r"(?s:.)"),  # whitespace the lexer does not split on (U+202F ...) too
]
_COMPILED = [(name, re.compile(rx)) for name, rx in _RULES]
_FIRST_GROUP = {"cannot", "gonna", "nt_word", "redaux_word", "tis", "y_apos"}

_BRACKETS = {"(": "-LRB-", ")": "-RRB-", "[": "-LSB-", "]": "-RSB-", "{": "-LCB-", "}": "-RCB-"}
_LATEX = {"`": "`", "\u2018": "`", "\u201b": "`", "\u2039": "`", "\u2019": "'", "\u203a": "'", "\u201c": "``", "\u00ab": "``", "\u201d": "''", "\u00bb": "''"}
_SINGLE = {"\u00a3": "#", "\u20ac": "$", "\u00a2": "cents", "\u00bd": "1/2", "\u00bc": "1/4", "\u00be": "3/4", "\u2153": "1/3", "\u2154": "2/3", '"': "''", "'": "'"}


def _drop(c: str) -> bool:
    # Java drops chars no rule matches: surrogates (astral chars), controls, format chars (ZWJ), marks.
    # Zs here: the spaces the lexer does not split on (U+1680, U+202F, U+205F) are dropped too.
    return ord(c) > 0xFFFF or unicodedata.category(c) in ("Cc", "Cf", "Mn", "Me", "Co", "Cn", "Zs")


def _lex(chunk: str) -> list[str]:
    out: list[str] = []
    pos, n = 0, len(chunk)
    while pos < n:
        best_len, best_name, best_m = 0, "", None
        for name, rx in _COMPILED:
            m = rx.match(chunk, pos)
            if m is not None and m.end() - pos > best_len:
                best_len, best_name, best_m = m.end() - pos, name, m
        assert best_m is not None
        text = best_m.group(0)
        if best_name in _FIRST_GROUP:
            text = next(g for g in best_m.groups() if g is not None)
        pos += len(text)
        if best_name == "any":
            if _drop(text):
                continue
            text = _BRACKETS.get(text) or _SINGLE.get(text, text)
        elif best_name == "quotes":
            text = "".join(_LATEX[c] for c in text)
        elif best_name == "ldots":
            text = "..."
        elif best_name == "hyphens":
            text = "-" if text == "-" else "--" if len(text) < 5 else text  # runs of 5+ are kept
        elif best_name in ("smiley", "paren_dash"):
            text = text.replace("(", "-LRB-").replace(")", "-RRB-")
        elif best_name == "amp":
            text = "&"
        elif best_name in ("nt", "redaux", "apoword", "tis", "y_apos", "nt_word", "redaux_word"):
            text = text.replace("\u2019", "'")
        out.append(text.lower())
    return out


_SPLIT = re.compile("([ \t\u00a0\u2000-\u200a\u3000\r\n\f\v\u0085\u2028\u2029]+)")
_DIGITS14 = re.compile(r"[0-9]{1,4}")
_FRAC = re.compile(r"[0-9]{1,4}/[0-9]{1,4}")
_INITIAL = re.compile(r"[a-z]\.")
# A one-letter initial keeps its period ("A. Smith") unless a capitalised word from this list
# (found by probing the Java lexer) or an SGML tag follows: "A. The" -> "a . the".
_SENT_START = frozenset("a an at he in it other she they we this that there these but as if her their our when while after many some one the then so yet now here since what you mr.".split())
_cache: dict[str, list[str]] = {}


def _chunk(chunk: str) -> list[str]:
    got = _cache.get(chunk)
    if got is None:
        got = _lex(chunk)
        if len(_cache) < 2_000_000:
            _cache[sys.intern(chunk)] = got
    return got


def _starts_sentence(chunk: str) -> bool:
    return (chunk[:1].isupper() and chunk.lower() in _SENT_START) or (len(chunk) > 2 and _chunk(chunk) == [chunk.lower()] and chunk[0] == "<")


# Per chunk: (tokens kept after PUNCTUATIONS, flags for the rules that look across chunks).
_LAST_DIGITS, _LAST_INITIAL, _FRAC_START, _SENT_STARTER = 1, 2, 4, 8  # FRAC_START >> 2 == LAST_DIGITS ...
_ODD_SPACE = re.compile("[\x1c-\x1f\u1680\u202f\u205f]")
_infos: dict[str, tuple[list[str], int]] = {}
# Whole captions whose result does not depend on the next caption.
_lines: dict[str, str] = {}


def _info(chunk: str) -> tuple[list[str], int]:
    got = _infos.get(chunk)
    if got is None:
        toks = _chunk(chunk)
        flags = 0
        if toks:
            t = toks[-1]
            if _DIGITS14.fullmatch(t) and chunk.endswith(t):
                flags |= _LAST_DIGITS
            if _INITIAL.fullmatch(t) and chunk[-2:].lower() == t:
                flags |= _LAST_INITIAL
            if _FRAC.match(chunk):
                flags |= _FRAC_START
            if _starts_sentence(chunk):
                flags |= _SENT_STARTER
        got = ([t for t in toks if t not in PUNCTUATIONS], flags)
        if len(_infos) < 2_000_000:
            _infos[sys.intern(chunk)] = got
    return got


def tokenize(caption: str, next_caption: str = "") -> str:
    """One caption -> the string pycocoevalcap's PTBTokenizer would produce for it.

    `next_caption` is the caption on the following line of the same Java call: a one-letter
    initial at the very end of a caption looks at it (the lexer's sentence-end lookahead).
    Fast path: the cached chunks' kept tokens, joined; the rare captions where a rule spanning two
    chunks (a fraction after a number, an initial before a sentence starter) might apply go
    through _tokenize_slow.
    """
    got = _lines.get(caption)
    if got is not None:
        return got
    out: list[str] = []
    prev = 0
    get = _infos.get
    # str.split() splits on every char _SPLIT does, and on a few more that the lexer does not treat as space
    for chunk in (_SPLIT.split(caption)[::2] if _ODD_SPACE.search(caption) else caption.split()):
        info = get(chunk)
        if info is None:
            info = _info(chunk)
        kept, flags = info
        # (previous chunk ends with 1-4 digits and this one starts with a fraction) or
        # (previous chunk ends with an initial and this one is a sentence starter)
        if prev & (flags >> 2):
            return _tokenize_slow(caption, next_caption)
        out += kept
        prev = flags
    if prev & _LAST_INITIAL:  # depends on the next caption: not cached
        return _tokenize_slow(caption, next_caption) if next_caption else " ".join(out)
    got = " ".join(out)
    if len(_lines) < 2_000_000:
        _lines[caption] = got
    return got


def _tokenize_slow(caption: str, next_caption: str = "") -> str:
    parts = _SPLIT.split(caption)
    toks: list[str] = []
    prev = ""  # the raw chunk right before this one (even if it lexed to nothing)
    for i in range(0, len(parts), 2):
        chunk = parts[i]
        if not chunk:
            continue
        cur = _chunk(chunk)
        last, prev = prev, chunk
        if toks and cur:
            sep = parts[i - 1]
            # The lexer's lookaheads do not see past chars it drops (emoji, zero-width ...): the
            # previous token must end the previous chunk, e.g. "42 \U0001f600 1/2" stays two tokens
            # and "A. \U0001f600 It" keeps "a.".
            # FRAC may span one space: "42 1/2" is one token, printed with a no-break space.
            m = _FRAC.match(chunk) if sep in (" ", "\u00a0") and _DIGITS14.fullmatch(toks[-1]) and last.endswith(toks[-1]) else None
            if m:
                toks[-1] = toks[-1] + "\u00a0" + m.group()
                cur = _chunk(chunk[m.end():]) if m.end() < len(chunk) else []
            # An initial before whitespace + a sentence starter loses its period.
            elif _INITIAL.fullmatch(toks[-1]) and last[-2:].lower() == toks[-1] and _starts_sentence(chunk):
                toks[-1] = toks[-1][0]
        toks.extend(cur)
    if next_caption and toks and _INITIAL.fullmatch(toks[-1]) and caption.rstrip()[-2:].lower() == toks[-1]:
        first = _SPLIT.split(next_caption.strip(), maxsplit=1)[0]
        if first and _starts_sentence(first):
            toks[-1] = toks[-1][0]
    return " ".join(t for t in toks if t not in PUNCTUATIONS)


def tokenize_lines(lines: list[str]) -> list[str]:
    """Tokenise captions that pycocoevalcap would send to Java in one call, in that order."""
    lines = [l.replace("\n", " ") for l in lines]
    nxt = [""] * len(lines)
    following = ""
    for i in range(len(lines) - 1, -1, -1):  # the next non-blank line (blank lines are only newlines to the lexer)
        nxt[i] = following
        if lines[i].strip():
            following = lines[i]
    return [tokenize(l, n) for l, n in zip(lines, nxt)]


def tokenize_corpus(captions: dict) -> dict:
    """Same shape as pycocoevalcap's PTBTokenizer.tokenize: {id: [{"caption": str}, ...]} -> {id: [str]}."""
    flat = [c["caption"] if isinstance(c, dict) else c for v in captions.values() for c in v]
    toks = iter(tokenize_lines(flat))
    return {k: [next(toks) for _ in v] for k, v in captions.items()}
