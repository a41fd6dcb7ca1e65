"""ViZer: `capalign mapper train` (mapper.py, on features.py's cache), `capalign vizer train` (train.py),
`vizer sweep` (sweep.py) and `vizer diagnose` (diagnose.py). `vizer study` is a study recipe (capalign.study.vizer)."""
