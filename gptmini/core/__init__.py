"""The core: config errors and range types, model, AdamW groups, schedule, the training step, data sources, tokenizer, token files, checkpoints and the export folder, sampling, FLOPs.

Nothing here imports Lightning (tests/cross_cutting/test_layers.py checks it), so inference and reuse elsewhere
need only torch, tokenizers, numpy, safetensors (export folders) and jsonargparse (its range types,
in gptmini.core.config).
"""

# The package's version, here so core (the export's model file header) can name it without importing
# the upper package; gptmini.__version__ re-exports it. pyproject.toml's version must match (test_packaging).
__version__ = "0.1.0"
