"""`capalign judge ...`: grade caption files with a VLM judge (grade.py) and train the shapes world's nano judge (train.py).
The judge itself (loading, prompt, expected grade) is `capalign.metrics.judge`: evaluation uses it as a metric."""
