"""`capalign study RECIPE.yaml`: one recipe names the stages of a study; each stage writes into one run folder.

- recipe.py: the recipe file (top-level `name`, `seeds`, and one section per stage whose fields are those of
  the stage's own command config) and its validation (an unknown stage or field is a one-line error).
- stage.py: what a stage is (command config + study options + outputs + run) and the per-seed Context.
- stages/: the stages, in execution order (data, base, mapper, vizer, caption, evaluate, features, summary).
- run.py: the orchestrator (`capalign study`): seed by seed, skip stages whose outputs exist, index.json
  after every stage (the run-folder contract the report reads: docs/run-layout.md, capalign.study.layout).
- summary.py, plots.py: the multi-seed summary (capalign.stats), its tables and figures.
- vizer.py: `capalign vizer study`, flags -> a ViZer-only recipe (what `make demo` runs).
- estimate.py: `capalign estimate RECIPE`, GPU memory and time per stage from parameter/FLOP counts.
"""
