"""The core: config errors and range types, model, AdamW groups, schedule, the training step, data sources, tokenizer, token files, checkpoints, sampling, FLOPs.

Nothing here imports Lightning (tests/test_layers.py checks it), so inference and reuse elsewhere
need only torch, tokenizers, numpy and jsonargparse (its range types, in gptmini.core.config).
"""
