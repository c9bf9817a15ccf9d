"""The byte-level BPE tokenizer: train on text pieces, load from a file or a checkpoint's JSON. No Lightning."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from gptmini.core.config import ConfigError
from gptmini.core.tokens import EOT


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """Byte-level BPE (GPT-2 style) trained on the texts, with one end-of-text special token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def load_tokenizer(path: str | Path, setting: str = "data.tokenizer"):
    """A tokenizers JSON file; ``setting`` is how the command names it in errors (fit: data.tokenizer)."""
    from tokenizers import Tokenizer

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{setting} file {path} does not exist; give a tokenizers JSON file or null.")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on bad JSON
        raise ConfigError(f"{setting} file {path} is not a valid tokenizers JSON file: {e}") from None


def vocab_of(vocab_size: int, tokenizer: str | None) -> int:
    """The vocab a run will have: the given tokenizer's size, else the BPE size to train."""
    return load_tokenizer(Path(tokenizer).expanduser()).get_vocab_size() if tokenizer else vocab_size


def tokenizer_from_json(text: str):
    from tokenizers import Tokenizer

    return Tokenizer.from_str(text)


def token_byte_lengths(tok) -> np.ndarray | None:
    """UTF-8 bytes each token id decodes to (int64, one entry per id; special tokens 0), or None
    when the tokenizer is not byte-level.

    In a byte-level BPE every ordinary token is a string over the 256-character byte alphabet (one
    character per byte, read back by the ByteLevel decoder), so a token's bytes are its length and
    the bytes of any run of tokens are the sum: bits per byte stays exact on part of a split (a
    window, limit_val_batches). Another decoder (WordPiece ``##``, SentencePiece) gets None;
    preparation also checks the sum against the text's bytes (a normalizer would break it).
    """
    from tokenizers import decoders, pre_tokenizers

    if not isinstance(tok.decoder, decoders.ByteLevel):  # token strings are not bytes then
        return None
    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    special = {i for i, t in tok.get_added_tokens_decoder().items() if t.special}
    out = np.zeros(tok.get_vocab_size(), dtype=np.int64)
    for i in range(len(out)):
        if i in special:
            continue  # the end-of-text marker is not text: it decodes to no bytes
        s = tok.id_to_token(i)
        if s is None or not set(s) <= alphabet:
            return None
        out[i] = len(s)
    return out
