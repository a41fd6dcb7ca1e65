"""`capalign rl train`: GRPO on the language model (config.py, train.py) with caption rewards (rewards.py)."""
