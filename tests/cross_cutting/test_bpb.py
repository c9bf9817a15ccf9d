"""val/bpb: bits per UTF-8 byte of the validation text, exact on any part of the split."""

from __future__ import annotations

import json
import math

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gptmini.core.optim import OptimConfig
from gptmini.core.schedule import ScheduleConfig
from gptmini.core.tokenizer import load_tokenizer, token_byte_lengths, train_tokenizer
from gptmini.core.tokens import inputs_and_targets
from gptmini.train.datamodule import GPTMiniData
from gptmini.train.module import GPTMiniModule

# Text with 2-, 3- and 4-byte UTF-8 characters: byte counts differ from character counts.
UNICODE_RECORDS = [
    "Café au lait, naïve façade — déjà vu. ",
    "日本語のテキストも少し。",
    "Emoji 🙂 and maths ∑ x² ≤ ∞. ",
]


def validate(module, dm, limit_val_batches, bar: dict | None = None) -> dict:
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=limit_val_batches,
    )
    metrics = trainer.validate(module, datamodule=dm, verbose=False)[0]
    if bar is not None:
        bar.update(trainer.progress_bar_metrics)
    return metrics


def scored_targets(dm, n_batches: int) -> list[torch.Tensor]:
    loader = dm.val_dataloader()
    return [inputs_and_targets(w)[1] for w, _ in zip(loader, range(n_batches))]


def decoded_bytes(tok, windows: list[torch.Tensor]) -> int:
    """Bytes the targets decode to, by the tokenizer's own decoder (independent of the table)."""
    return sum(len(tok.decode(row.tolist()).encode("utf-8")) for y in windows for row in y)


class Uniform(torch.nn.Module):
    """Equal logits over the vocabulary: every token costs ln V nats."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab

    def forward(self, x, y):
        logits = torch.zeros(*y.shape, self.vocab)
        return logits, F.cross_entropy(logits.view(-1, self.vocab), y.reshape(-1))


def test_uniform_model_scores_log2_v_times_tokens_over_bytes(tiny_model_cfg, tiny_data):
    module = GPTMiniModule(tiny_model_cfg, OptimConfig(), ScheduleConfig(warmup_steps=1))
    module.model = Uniform(tiny_model_cfg.vocab_size)
    bar: dict = {}
    metrics = validate(module, tiny_data, limit_val_batches=3, bar=bar)
    assert bar["val/bpb"] == pytest.approx(metrics["val/bpb"])  # shown in the progress bar too
    ys = scored_targets(tiny_data, 3)
    tokens = sum(y.numel() for y in ys)
    tok = load_tokenizer(tiny_data.tokenizer_path)
    expected = math.log2(tiny_model_cfg.vocab_size) * tokens / decoded_bytes(tok, ys)
    assert metrics["val/bpb"] == pytest.approx(expected, rel=1e-6)
    assert metrics["val/loss"] == pytest.approx(math.log(tiny_model_cfg.vocab_size), rel=1e-6)


def test_val_bpb_matches_a_hand_computation(tiny_model_cfg, tiny_data):
    torch.manual_seed(0)
    module = GPTMiniModule(tiny_model_cfg, OptimConfig(), ScheduleConfig(warmup_steps=1))
    metrics = validate(module, tiny_data, limit_val_batches=2)
    nats, ys = 0.0, []
    with torch.no_grad():
        for w, _ in zip(tiny_data.val_dataloader(), range(2)):
            x, y = inputs_and_targets(w)
            logits = module.model(x)[0]
            nats += F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1), reduction="sum").double().item()
            ys.append(y)
    n_bytes = decoded_bytes(load_tokenizer(tiny_data.tokenizer_path), ys)
    assert metrics["val/bpb"] == pytest.approx(nats / (math.log(2) * n_bytes), rel=1e-5)
    # beside it, the loss per token is the same nats over the tokens
    assert metrics["val/loss"] == pytest.approx(nats / sum(y.numel() for y in ys), rel=1e-5)


@pytest.fixture(scope="module")
def unicode_corpus(tmp_path_factory, corpus_file):
    """A JSONL corpus mixing the tiny plays with multi-byte text, and its UTF-8 byte count."""
    root = tmp_path_factory.mktemp("unicode")
    plays = corpus_file.read_text(encoding="utf-8")
    records = [plays[i : i + 3000] + UNICODE_RECORDS[(i // 3000) % 3] for i in range(0, 60_000, 3000)]
    path = root / "mixed.jsonl"
    path.write_text("".join(json.dumps({"text": r}) + "\n" for r in records), encoding="utf-8")
    return path, sum(len(r.encode("utf-8")) for r in records)


def test_meta_counts_each_splits_bytes_and_the_table_adds_up(unicode_corpus, tmp_path):
    path, text_bytes = unicode_corpus
    dm = GPTMiniData(data=str(path), cache_dir=str(tmp_path), vocab_size=300, block_size=16)
    dm.prepare_data()
    meta = dm.meta()
    assert meta["train_bytes"] + meta["val_bytes"] == text_bytes  # every byte of text, once
    table = dm.token_byte_table()
    val = np.fromfile(dm.cache_path / "val.bin", dtype=np.uint16)
    assert int(table[val].sum()) == meta["val_bytes"]
    tok = load_tokenizer(dm.tokenizer_path)
    eot = tok.token_to_id("<|endoftext|>")
    assert table[eot] == 0  # the record separator is not text
    # split at a record boundary, the table equals what the decoder gives
    ends = np.flatnonzero(val == eot)
    assert int(table[val[: ends[-1] + 1]].sum()) == len(tok.decode(val[: ends[-1] + 1].tolist()).encode())


def test_a_tokenizer_that_is_not_byte_exact_gets_no_bpb(unicode_corpus, corpus_file, tmp_path):
    from tokenizers import normalizers

    tok = train_tokenizer([corpus_file.read_text(encoding="utf-8")], 300)
    assert token_byte_lengths(tok) is not None
    tok.normalizer = normalizers.Replace("e", "")  # drops bytes: the table no longer adds up to the text
    tok.save(str(tmp_path / "tok.json"))
    dm = GPTMiniData(
        data=str(unicode_corpus[0]), cache_dir=str(tmp_path / "c"), tokenizer=str(tmp_path / "tok.json"), block_size=16
    )
    dm.prepare_data()
    assert dm.meta()["val_bytes"] is None and dm.token_byte_table() is None

    from tokenizers import Tokenizer, models

    wordpiece = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1, "##b": 2}, unk_token="[UNK]"))
    assert token_byte_lengths(wordpiece) is None
