"""What every training method shares: LoRA (lora.py), losses (losses.py), the nano training loop (loop.py)."""
