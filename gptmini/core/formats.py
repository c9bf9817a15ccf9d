"""The files gptmini writes and reads back: every key and file name in one place. No Lightning.

Writer and reader import the names from here, so they cannot drift apart;
``tests/core/test_formats.py`` checks that the keys a checkpoint holds are the keys the loaders read.

Checkpoint (``.ckpt``, written by Lightning for :class:`gptmini.train.module.GPTMiniModule`):
Lightning's own keys (``state_dict``, ``hyper_parameters``, ``global_step``, ...) plus the
``gptmini_*`` keys below. A bare ``GPTMini`` needs only the state dict (keys ``model.<param>``,
``model`` being the module's attribute) and the model config.

Data cache (one folder per data settings under ``data.cache_dir``): the tokenizer, the token files
of each split and ``meta.json`` (whose presence marks a finished cache).

Export folder (``gptmini export``): the names Hugging Face tools look for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# -- checkpoint --------------------------------------------------------------------------------
# Bumped when a gptmini key changes meaning; a checkpoint without the key is version 0 (before 0.1.1).
CKPT_FORMAT_VERSION = 1
CKPT_FORMAT = "gptmini_format"
CKPT_MODEL_CONFIG = "gptmini_model_config"  # the ModelConfig as a dict: enough to rebuild a bare GPTMini
CKPT_TOKENIZER = "gptmini_tokenizer"  # tokenizer.json's text: generation works without the data cache
CKPT_RUN_CONFIG = "gptmini_config"  # the run's resolved config (config.yaml's text)
CKPT_RUN_STATE = "gptmini_run"  # the run record, RunRecord.as_dict() (below)
# Every gptmini key a checkpoint written today holds (the tokenizer only when the data had one).
CKPT_GPTMINI_KEYS = (CKPT_FORMAT, CKPT_MODEL_CONFIG, CKPT_TOKENIZER, CKPT_RUN_CONFIG, CKPT_RUN_STATE)
# One writer fills them all (gptmini.train.checkpoint_contents.CheckpointContents, through
# gptmini.core.checkpoint.write_gptmini_keys); gptmini.core.checkpoint reads them.
# Lightning's keys that gptmini reads.
CKPT_STATE_DICT = "state_dict"
CKPT_HPARAMS = "hyper_parameters"
CKPT_STEP = "global_step"
# GPTMiniModule keeps its GPTMini under this attribute, so the state dict's keys start with it.
MODEL_ATTR = "model"
MODEL_PREFIX = MODEL_ATTR + "."
COMPILED_PREFIX = "_orig_mod."  # inserted by torch.compile wrappers; stripped on load



@dataclass
class RunRecord:
    """What a run has done, kept in every checkpoint (``CKPT_RUN_STATE``), restored on resume; the
    export's model card reads it."""

    tokens_seen: int = 0  # training tokens over all processes
    val: list[dict[str, float]] = field(default_factory=list)  # {"step", "val/loss", "val/bpb"} per validation
    corpus: dict[str, Any] = field(default_factory=dict)  # meta.json's META_CORPUS_KEYS

    def as_dict(self) -> dict[str, Any]:
        return {"tokens_seen": int(self.tokens_seen), "val": list(self.val), "corpus": dict(self.corpus)}

    @classmethod
    def of(cls, ckpt: dict[str, Any]) -> RunRecord:
        """The record a checkpoint holds (an empty one for checkpoints written before it existed)."""
        state = ckpt.get(CKPT_RUN_STATE) or {}
        return cls(int(state.get("tokens_seen", 0)), list(state.get("val", [])), dict(state.get("corpus") or {}))


# -- run folder (logger's version_N) -----------------------------------------------------------
RUN_CONFIG_FILE = "config.yaml"  # LightningCLI's SaveConfigCallback
CHECKPOINT_DIR = "checkpoints"  # ModelCheckpoint's default under the run folder
LAST_CKPT_GLOB = "last*.ckpt"  # save_last=True: last.ckpt (last-v1.ckpt when the name is taken)

# -- data cache --------------------------------------------------------------------------------
META_VERSION = 2  # 2: records of JSONL/Parquet/datasets, pieces cut inside long lines
TOKEN_DTYPE = np.uint16  # every token file: raw little-endian uint16 ids (vocab <= 65536)
CACHE_TOKENIZER = "tokenizer.json"
CACHE_META = "meta.json"  # written last: its presence marks a finished cache
TOKEN_FILE_SUFFIX = ".bin"  # a token file (what `gptmini eval --data` recognises as one)
CACHE_ALL_TOKENS = "all" + TOKEN_FILE_SUFFIX  # the whole stream before the val tail is split off
SPLITS = ("train", "val")
META_VOCAB_SIZE = "vocab_size"  # meta.json: the tokenizer's vocab (checked against data.vocab_size)
# meta.json keys a checkpoint's run record keeps for the export's model card.
META_CORPUS_KEYS = ("sources", "train_tokens", "val_tokens", "val_from", "tokenizer", "train_bytes", "val_bytes")


def split_file(split: str) -> str:
    """The token file of ``split`` ("train" or "val") in a cache folder."""
    return split + TOKEN_FILE_SUFFIX


def meta_tokens(split: str) -> str:
    """meta.json's key for the number of tokens in ``split``'s file (checked against its size)."""
    return f"{split}_tokens"


def meta_bytes(split: str) -> str:
    """meta.json's key for the UTF-8 bytes of text ``split``'s tokens decode to (val/bpb); its value
    is null when the tokenizer is not byte-exact."""
    return f"{split}_bytes"


# -- export folder -------------------------------------------------------------------------------
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
CARD_FILE = "README.md"  # the model card (gptmini.core.model_card)
MODEL_CODE_FILE = "modeling_gptmini.py"  # the model's own code (gptmini.core.model_code)
EXPORT_FILES = (WEIGHTS_FILE, CONFIG_FILE, TOKENIZER_FILE, CARD_FILE, MODEL_CODE_FILE)
