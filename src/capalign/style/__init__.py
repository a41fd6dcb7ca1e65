"""Stylistic preference alignment, `capalign style ...`: config.py (the data and training flags), train.py
(zero-shot / SFT / DPO / SimPO), sweep.py + results.py (the data-efficiency sweep), classifier.py, pairs.py, wrlogp.py."""
