"""The core: model, AdamW groups, schedule, tokenizer, token files, checkpoints, sampling, FLOPs.

Nothing here imports Lightning (tests/test_layers.py checks it), so inference and reuse elsewhere
need only torch, tokenizers and numpy.
"""
