"""`capalign report RUN`: a static HTML report of a study run folder (docs/run-layout.md).

RUN/report/index.html plus its images (assets/): opens from the file system, needs no server and no
network. It shows what the run has (metrics table, gallery, PCA, sweep heatmap, style curves, RL
curves, recipe and versions) and says what is missing. The folder is built beside its destination
and renamed into place, so a report is never half-written.
"""

from __future__ import annotations

import html
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from .. import __version__
from ..config import arg
from ..utils import print0
from . import figures, gallery, page, style, tables
from .rundir import Run, load_run


@dataclass
class ReportConfig:
    """Write a static HTML report of a run folder: RUN/report/index.html and its images."""

    run: str = arg("", "Run folder written by `capalign study` (may be given as the first argument).")
    out: str = arg("", "Report folder (default RUN/report); an existing one is replaced as a whole.")
    max_images: int = arg(300, "Test images per seed in the gallery (0: all).")
    thumb_size: int = arg(256, "Longest side of the gallery's image copies, in pixels.")

    def __post_init__(self):
        if not str(self.run).strip():
            raise ValueError("give the run folder: capalign report RUN_DIR")
        if self.max_images < 0:
            raise ValueError(f"max_images must be >= 0, got {self.max_images}")
        if not 16 <= self.thumb_size <= 4096:
            raise ValueError(f"thumb_size must be in [16, 4096], got {self.thumb_size}")


def _absent(what: str) -> str:
    return f'<p class="absent">Not in this run: {html.escape(what)}.</p>'


def _stage_cells(s: dict) -> list[str]:
    secs = s.get("seconds")
    return [str(s.get("name", "")), str(s.get("seed", "")), str(s.get("status", "")),
            (f"{secs:.0f} s" if secs >= 10 else f"{secs:.1f} s") if isinstance(secs, (int, float)) else "", str(s.get("error", ""))]


def _recipe_section(run: Run) -> str:
    versions = run.index.get("versions") if isinstance(run.index.get("versions"), dict) else {}
    if not versions:
        run.note("index.json records no versions")
    vt = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in versions.items())
    recipe = run.file("recipe.yaml")
    if recipe.is_file():
        text, src = recipe.read_text(errors="replace"), "recipe.yaml"
    elif run.index.get("recipe") is not None:
        text, src = yaml.safe_dump(run.index["recipe"], sort_keys=False), "index.json"
    else:
        text, src = "", ""
        run.note("the run has no recipe (recipe.yaml)")
    stages = run.index.get("stages") or []
    st = "".join(f"<tr class='st-{html.escape(str(s.get('status', '')))}'>" + "".join(f"<td>{html.escape(c)}</td>" for c in _stage_cells(s)) + "</tr>" for s in stages if isinstance(s, dict))
    return ((f"<h3>Versions</h3><table class='metrics small'><tbody>{vt}</tbody></table>" if vt else "")
            + (f"<h3>Recipe ({src})</h3><pre>{html.escape(text)}</pre>" if text else "")
            + (f"<h3>Stages</h3><table class='metrics small'><thead><tr><th>stage</th><th>seed</th><th>status</th><th>time</th>"
               f"<th>error</th></tr></thead><tbody>{st}</tbody></table>" if st else ""))


def write_report(run: Run, folder: Path, cfg: ReportConfig) -> dict:
    """Write index.html and assets/ into `folder` (a fresh folder); return what the page holds."""
    assets = folder / "assets"
    assets.mkdir(parents=True)
    summary, source = tables.load_summary(run)
    headline = run.headline((summary or {}).get("budget"))
    metrics = (tables.metrics_table(summary, run.systems) + tables.paired_table(summary, headline)
               + f'<p class="legend">Source: {html.escape(source)}.</p>' + figures.study_figures(run, assets)) if summary else _absent("no evaluation yet (eval files or summary.json)")
    table, gdata = gallery.build(run, folder, cfg.max_images, cfg.thumb_size)
    gal = page.gallery_controls(gdata) + table if table else _absent("no test captions yet")
    sections = [("metrics", "Metrics", metrics), ("gallery-section", "Gallery", gal),
                ("pca", "Features before and after", figures.pca_section(run, assets) or _absent("features.safetensors (PCA of vision and caption features)")),
                ("sweep", "Mapper sweep", figures.sweep_section(run, assets) or _absent("sweep/results.json (`capalign vizer sweep`)")),
                ("style", "Style sweep", style.style_section(run, assets) or _absent("style/sweep.json (style learning curves)")),
                ("rl", "RL reward", figures.rl_section(run, assets) or _absent("rl/*/history.json (RL training)")),
                ("recipe", "Recipe and versions", _recipe_section(run))]
    if run.notes:  # after every section has been built: they add their notes
        items = "".join(f"<li>{html.escape(n)}</li>" for n in run.notes)
        sections.insert(0, ("missing", "What is missing", f'<div class="banner"><ul>{items}</ul></div>'))
    name = run.index.get("name") or run.root.resolve().name
    v = run.index.get("versions") if isinstance(run.index.get("versions"), dict) else {}
    subtitle = (f"{len(run.seeds)} seed(s): {', '.join(run.seeds) or '-'} · systems: {', '.join(run.systems) or '-'}"
                + (f" · created {run.index['created']}" if run.index.get("created") else "")
                + "".join(f" · {k} {v[k]}" for k in ("capalign", "torch", "transformers") if k in v))
    (folder / "index.html").write_text(page.page(f"capalign report: {name}", subtitle, sections, gdata,
                                                 f"Written by capalign {__version__} `capalign report`."), encoding="utf-8")
    return {"images": gdata["images"], "missing_images": gdata["missing_images"], "notes": list(run.notes)}


def _replace_dir(tmp: Path, out: Path) -> None:
    """Put `tmp` at `out`: two renames, so `out` is always either the old report or the new one, whole."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError:
        if old is not None:
            os.rename(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def build_report(cfg: ReportConfig) -> tuple[Path, dict]:
    run = load_run(cfg.run)
    out = Path(cfg.out) if cfg.out else run.root / "report"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        info = write_report(run, tmp, cfg)
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out, info


def run(cfg: ReportConfig) -> Path:
    from rich.markup import escape

    out, info = build_report(cfg)
    for n in info["notes"]:
        print0(f"[yellow]missing:[/yellow] {escape(n)}", soft_wrap=True)
    print0(f"wrote {escape(str(out / 'index.html'))} ({info['images']} gallery images, {info['missing_images']} of their images missing)", soft_wrap=True)
    return out
