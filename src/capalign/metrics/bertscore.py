"""BERTScore (Zhang et al. 2020) with the semantics of the `bert-score` package (0.3.13), no dependency on it.

Per candidate/reference pair: contextual token embeddings from hidden layer `num_layers` of any
transformers encoder (AutoModel + AutoTokenizer, hub id or local folder), cosine similarity,
greedy matching: P = weighted mean over candidate tokens of their best cosine with a reference
token, R = the same from the reference side, F = 2PR/(P+R).

Exactly as bert-score:
- tokenisation: `sent.strip()`, special tokens added, truncated at `tokenizer.model_max_length`;
  GPT-2/RoBERTa tokenizers get `add_prefix_space=True`.
- weights: without idf every token weighs 1 except [CLS]/[SEP] (<s>/</s>), which weigh 0 (they are
  still candidates for the best match on the other side, as in bert-score). With idf, weights are
  log((M+1)/(df+1)) with df counted over the M references (multi-references flattened, as bert-score
  does), unseen tokens log(M+1); [CLS]/[SEP] occur in every reference, so they weigh 0.
- the layer: the encoder is cut after `num_layers` layers and its last hidden state is used.
- multiple references: P, R and F are each the max over the references, independently
  (`all_preds[beg:end].max(dim=0)` in bert-score), so P and R may come from different references.
  `multi_ref="best_f"` instead reports the P/R/F of the reference with the highest F.
- empty candidate or reference (nothing left after strip): P = R = F = 0, counted in the output.
- rescaling: (x - b) / (1 - b) with b from row `num_layers` of the baseline CSV (LAYER,P,R,F),
  applied after the max over references.

Differences (documented in docs/metrics.md): bert-score pads the greedy-matching batch with zero
similarities, so a token whose best real cosine is negative can get 0 depending on which sentences
share its batch; here padding never wins a match (batch-independent). When all weights of a
non-empty sentence are 0 (idf: every token occurs in every reference) bert-score returns NaN for P/R;
here 0. Without a baseline file bert-score warns and does not rescale; here it is an error.
"""

from __future__ import annotations

import csv
import functools
import math
import warnings
from collections import Counter
from pathlib import Path

from .. import CapalignError

DEFINITION = ("BERTScore (bert-score 0.3.13 semantics): greedy cosine matching of layer-L token embeddings, "
              "[CLS]/[SEP] weight 0, multi-reference = max of P, R, F over references")


def _truncate_layers(model, num_layers: int) -> bool:
    """Keep the first `num_layers` layers (bert-score's get_model); False if the layout is unknown."""
    import torch

    def cut(owner, attr):
        layers = getattr(owner, attr)
        if not 0 <= num_layers <= len(layers):
            raise CapalignError(f"num_layers must be between 0 and {len(layers)} for this model, got {num_layers}")
        setattr(owner, attr, torch.nn.ModuleList(list(layers)[:num_layers]))
        return True

    if hasattr(model, "n_layers"):  # xlm
        if not 0 <= num_layers <= model.n_layers:
            raise CapalignError(f"num_layers must be between 0 and {model.n_layers} for this model, got {num_layers}")
        model.n_layers = num_layers
        return True
    if hasattr(model, "layer"):  # xlnet
        return cut(model, "layer")
    if hasattr(model, "encoder"):
        enc = model.encoder
        if hasattr(enc, "albert_layer_groups"):
            enc.config.num_hidden_layers = num_layers
            return True
        if hasattr(enc, "block"):
            return cut(enc, "block")
        if hasattr(enc, "layer"):
            return cut(enc, "layer")
        return False
    if hasattr(model, "transformer") and hasattr(model.transformer, "layer"):  # distilbert
        return cut(model.transformer, "layer")
    if hasattr(model, "layers"):
        return cut(model, "layers")
    return False


@functools.lru_cache(maxsize=2)
def _load(model: str, num_layers: int, device: str):
    from transformers import AutoModel, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(model)
        if "t5" in model:
            from transformers import T5EncoderModel

            enc = T5EncoderModel.from_pretrained(model)
        else:
            enc = AutoModel.from_pretrained(model)
    except (OSError, ValueError) as e:
        raise CapalignError(f"cannot load BERTScore model {model!r} ({' '.join(str(e).split())[:160]}); "
                            "pass a local folder with --bertscore_model") from None
    if hasattr(enc, "decoder") and hasattr(enc, "encoder"):
        enc = enc.encoder
    cut = _truncate_layers(enc, num_layers)
    enc.eval().to(device)
    return tok, enc, cut


def _encode(tok, sents: list[str]) -> tuple[list[list[int]], int]:
    """bert-score's sent_encode for a list; returns ids and how many sentences were truncated."""
    from transformers import GPT2Tokenizer, RobertaTokenizer

    max_len = tok.model_max_length if tok.model_max_length < 10**6 else 512
    extra = {"add_prefix_space": True} if isinstance(tok, (GPT2Tokenizer, RobertaTokenizer)) else {}
    empty = tok("", add_special_tokens=True)["input_ids"]
    stripped = [s.strip() for s in sents]
    nonempty = [s for s in stripped if s]
    ids_ne = tok(nonempty, add_special_tokens=True, truncation=True, max_length=max_len, **extra)["input_ids"] if nonempty else []
    full = [i for i, x in enumerate(ids_ne) if len(x) >= max_len]
    truncated = 0
    if full:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
        if isinstance(getattr(tok, "deprecation_warnings", None), dict):  # silence the "longer than max length" log: we count them
            tok.deprecation_warnings["sequence-length-is-longer-than-the-specified-maximum"] = True
            long = tok([nonempty[i] for i in full], add_special_tokens=True, truncation=False, **extra)["input_ids"]
        truncated = sum(len(x) > max_len for x in long)
    it = iter(ids_ne)
    return [list(next(it)) if s else list(empty) for s in stripped], truncated


def _read_baseline(path: str | Path, num_layers: int):
    import torch

    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    body = rows[1:]  # header LAYER,P,R,F (pandas read_csv(...).iloc[num_layers])
    if not 0 <= num_layers < len(body):
        raise CapalignError(f"baseline file {path} has no row for layer {num_layers}")
    return torch.tensor([float(x) for x in body[num_layers][1:4]], dtype=torch.float64)


def default_baseline_path(model: str, lang: str = "en") -> Path | None:
    """The baseline file shipped with the bert-score package for `model`, if that package is installed."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("bert_score")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    p = Path(spec.origin).parent / "rescale_baseline" / lang / f"{model}.tsv"
    return p if p.is_file() else None


def bert_score(cands: list[str], refs: list[list[str]], model: str = "roberta-large", num_layers: int = 17, idf: bool = False,
               rescale_with_baseline: bool = False, baseline_path: str | None = None, batch_size: int = 64,
               device: str | None = None, multi_ref: str = "max_each", show_progress: bool | None = None) -> dict:
    """BERTScore P/R/F per candidate (best over its references) and their corpus means.

    refs[i] is the list of references of cands[i] (a plain string is taken as one reference).
    Returns {"P", "R", "F": per-candidate lists, "P_mean", "R_mean", "F_mean", counts, settings}.
    """
    import torch

    from ..devices import resolve_device
    from ..utils import progress

    if len(cands) != len(refs):
        raise ValueError(f"{len(cands)} candidates but {len(refs)} reference lists")
    if multi_ref not in ("max_each", "best_f"):
        raise ValueError("multi_ref must be 'max_each' (bert-score) or 'best_f'")
    refs = [[r] if isinstance(r, str) else list(r) for r in refs]
    if any(not r for r in refs):
        raise ValueError("every candidate needs at least one reference")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    baseline = None
    if rescale_with_baseline:
        path = baseline_path or default_baseline_path(model)
        if path is None or not Path(path).is_file():
            raise CapalignError(f"no BERTScore baseline file for {model!r}" + (f" at {path}" if path else "") + "; give baseline_path")
        baseline = _read_baseline(path, num_layers)
    dev = resolve_device(device or "auto")
    tok, enc, cut = _load(model, num_layers, dev)

    flat_refs = [r for group in refs for r in group]
    sents = list(dict.fromkeys(list(cands) + flat_refs))
    ids, n_trunc = _encode(tok, sents)
    if n_trunc:
        warnings.warn(f"BERTScore: {n_trunc} sentence(s) longer than {tok.model_max_length} tokens were truncated", stacklevel=2)
    index = {s: i for i, s in enumerate(sents)}
    specials = {tok.cls_token_id, tok.sep_token_id} - {None}
    if idf:
        ref_ids = [ids[index[r]] for r in flat_refs]  # every reference is a document, duplicates included
        df = Counter(t for x in ref_ids for t in set(x))
        m = len(flat_refs)
        default = math.log(m + 1)
        weight = lambda t: math.log((m + 1) / (df[t] + 1)) if t in df else default  # noqa: E731
    else:
        weight = lambda t: 0.0 if t in specials else 1.0  # noqa: E731
    empty = [not s.strip() for s in sents]

    # embeddings of every distinct sentence, batched in length order (less padding)
    order = sorted(range(len(sents)), key=lambda i: -len(ids[i]))
    embs: list = [None] * len(sents)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    show = len(sents) > 2000 if show_progress is None else show_progress
    with progress(disable=not show) as bar, torch.inference_mode():
        task = bar.add_task("bertscore", total=len(sents), rate="")
        for b in range(0, len(order), batch_size):
            chunk = order[b:b + batch_size]
            n = max(len(ids[i]) for i in chunk)
            x = torch.full((len(chunk), n), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), n), dtype=torch.long)
            for j, i in enumerate(chunk):
                x[j, :len(ids[i])] = torch.tensor(ids[i])
                mask[j, :len(ids[i])] = 1
            x, mask = x.to(dev), mask.to(dev)
            if cut:
                h = enc(x, attention_mask=mask)[0]
            else:
                h = enc(x, attention_mask=mask, output_hidden_states=True).hidden_states[num_layers]
            h = torch.nn.functional.normalize(h.float(), dim=-1).cpu()
            for j, i in enumerate(chunk):
                w = torch.tensor([weight(t) for t in ids[i]], dtype=torch.float32)
                embs[i] = (h[j, :len(ids[i])], w)
            bar.update(task, advance=len(chunk))

    # greedy matching, batched over candidate/reference pairs
    pairs = [(index[c], index[r]) for c, group in zip(cands, refs) for r in group]
    out = torch.zeros((len(pairs), 3), dtype=torch.float64)
    pb = max(batch_size, 256)
    for b in range(0, len(pairs), pb):
        chunk = pairs[b:b + pb]
        hyp = torch.nn.utils.rnn.pad_sequence([embs[c][0] for c, _ in chunk], batch_first=True)
        ref = torch.nn.utils.rnn.pad_sequence([embs[r][0] for _, r in chunk], batch_first=True)
        hw = torch.nn.utils.rnn.pad_sequence([embs[c][1] for c, _ in chunk], batch_first=True).double()
        rw = torch.nn.utils.rnn.pad_sequence([embs[r][1] for _, r in chunk], batch_first=True).double()
        hm = torch.nn.utils.rnn.pad_sequence([torch.ones(len(embs[c][1]), dtype=torch.bool) for c, _ in chunk], batch_first=True)
        rm = torch.nn.utils.rnn.pad_sequence([torch.ones(len(embs[r][1]), dtype=torch.bool) for _, r in chunk], batch_first=True)
        sim = torch.bmm(hyp, ref.transpose(1, 2)).double()
        sim = sim.masked_fill(~(hm[:, :, None] & rm[:, None, :]), -2.0)  # padding never wins (cos >= -1); weight 0 there
        p_tok = sim.max(dim=2).values.clamp_min(-1.0)
        r_tok = sim.max(dim=1).values.clamp_min(-1.0)
        hs, rs = hw.sum(1), rw.sum(1)
        P = torch.where(hs > 0, (p_tok * hw).sum(1) / hs.clamp_min(1e-300), torch.zeros_like(hs))
        R = torch.where(rs > 0, (r_tok * rw).sum(1) / rs.clamp_min(1e-300), torch.zeros_like(rs))
        F = torch.where((P + R) != 0, 2 * P * R / (P + R), torch.zeros_like(P))
        zero = torch.tensor([empty[c] or empty[r] for c, r in chunk])
        P, R, F = (v.masked_fill(zero, 0.0) for v in (P, R, F))
        out[b:b + len(chunk)] = torch.stack([P, R, F], dim=1)

    res = torch.zeros((len(cands), 3), dtype=torch.float64)
    best_ref: list[int] = [0] * len(cands)
    start = 0
    for k, group in enumerate(refs):
        block = out[start:start + len(group)]
        best_ref[k] = int(block[:, 2].argmax())
        res[k] = block.max(dim=0).values if multi_ref == "max_each" else block[best_ref[k]]
        start += len(group)
    if baseline is not None:
        res = (res - baseline) / (1 - baseline)
    P, R, F = (res[:, j].tolist() for j in range(3))
    mean = lambda v: sum(v) / len(v) if v else 0.0  # noqa: E731
    return {"P": P, "R": R, "F": F, "P_mean": mean(P), "R_mean": mean(R), "F_mean": mean(F), "best_ref": best_ref,
            "empty_candidates": sum(not c.strip() for c in cands), "empty_references": sum(not r.strip() for r in flat_refs),
            "truncated": n_trunc, "model": model, "num_layers": num_layers, "idf": bool(idf), "multi_ref": multi_ref,
            "rescaled_with": str(baseline_path or default_baseline_path(model)) if baseline is not None else None,
            "definition": DEFINITION}
