"""`capalign nano train`: the nano captioner of the shapes world (train.py)."""
