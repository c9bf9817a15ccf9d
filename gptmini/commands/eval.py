"""Score a model on any corpus: ``gptmini eval CHECKPOINT --data FILE_OR_FOLDER``.

Loss (nats per token), perplexity and bits per UTF-8 byte of a ``.ckpt`` or an export folder, on
the text gptmini reads for training (text, JSONL, Parquet, folders, saved or Hub datasets,
``--text_field``), tokenized with the model's own tokenizer, or on a prepared token file
(``data_cache/<key>/val.bin``: the run's own validation split). Windows of the model's context,
each token scored once (``--stride``: see gptmini.core.evaluate). Lightning-free, like ``generate``.
``--help`` lists every option.
"""

from __future__ import annotations

import json as jsonlib
import sys
import tempfile
from pathlib import Path

import numpy as np

from gptmini.core.atomic import unwritable, write_text
from gptmini.core.checkpoint import load_model_and_tokenizer
from gptmini.core.config import ConfigError
from gptmini.core.device import resolve_device
from gptmini.core.evaluate import Score, score_tokens
from gptmini.core.formats import CACHE_TOKENIZER, TOKEN_DTYPE, TOKEN_FILE_SUFFIX
from gptmini.core.prepare import encode_sources, has_val_split
from gptmini.core.sources import VAL_SPLIT, ReadOptions, SettingNames, resolve_sources
from gptmini.core.tokenizer import load_tokenizer, token_byte_lengths
from gptmini.core.tokens import TextSeen
from gptmini.entry import command_main

# The corpus readers' messages name these flags, not fit's data.* settings.
EVAL_NAMES = SettingNames(data="--data", text_field="--text_field", skip_bad_records="--skip_bad_records", split="--split")


def _token_file(path: Path, tok) -> np.ndarray:
    """A prepared token file, checked to come from the model's tokenizer (tokenizer.json beside it)."""
    beside = path.parent / CACHE_TOKENIZER
    if not beside.is_file():
        raise ConfigError(
            f"--data {path} is a token file without {CACHE_TOKENIZER} beside it; give a token file from "
            f"a data cache folder (data_cache/<key>/val.bin) or the corpus itself."
        )
    if load_tokenizer(beside).to_str() != tok.to_str():
        raise ConfigError(
            f"--data {path} was tokenized with {beside}, not the model's tokenizer; give the corpus "
            f"itself (it is tokenized with the model's tokenizer) or the model's own data cache."
        )
    if path.stat().st_size < 2 * np.dtype(TOKEN_DTYPE).itemsize:
        raise ConfigError(f"--data {path} holds fewer than 2 tokens.")
    return np.memmap(path, dtype=TOKEN_DTYPE, mode="r")


def _check_json_path(path: Path) -> None:
    """--json can be written: refused before the evaluation, not after it."""
    if path.is_dir():
        raise ConfigError(f"--json {path} is a folder; give a file name, e.g. {path / 'eval.json'}.")
    problem = unwritable(path.parent, create=False)
    if problem:
        raise ConfigError(
            f"--json {path} cannot be written ({problem}); give a path in an existing folder this user can write to."
        )


def _encode_corpus(
    data, tok, opts: ReadOptions, split: str | None, out: Path, show: bool, limit: int | None = None
) -> np.ndarray:
    """The corpus, tokenized as preparation does (each record ends with the end-of-text token);
    with ``limit``, reading stops once that many tokens are encoded."""
    sources = resolve_sources(data, EVAL_NAMES)
    if split is None:  # a dataset's validation split when it has one, else its train split
        split = VAL_SPLIT if has_val_split(sources, opts) else opts.hf_split
    seen = TextSeen()
    n = encode_sources(tok, sources, opts, split, out, "gptmini eval: encoding", show, seen, limit=limit)
    if not seen.any or n < 2:
        names = ", ".join(map(str, sources))
        raise ConfigError(f"--data {names} holds no text to score (under --text_field={opts.text_field!r}?).")
    return np.memmap(out, dtype=TOKEN_DTYPE, mode="r")


def evaluate(
    checkpoint: str,
    data: str | list[str] | None = None,
    text_field: str = "text",
    split: str | None = None,
    hf_config: str | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    max_tokens: int | None = None,
    device: str = "auto",
    tokenizer: str | None = None,
    json: str | None = None,
    progress: bool = True,
    skip_bad_records: bool = False,
) -> dict:
    """Loss, perplexity and bits per byte of a gptmini model on a corpus.

    Args:
        checkpoint: A ``.ckpt`` written by ``gptmini fit`` or a folder written by ``gptmini export``.
        data: What to score: a file (.txt, .txt.gz, .jsonl, .jsonl.gz, .parquet), a folder of them, a
            dataset saved with save_to_disk, ``hf:NAME``, or a list of these, tokenized with the
            model's tokenizer; or a prepared token file (``data_cache/<key>/val.bin``, the run's own
            validation split); null = the embedded corpus.
        text_field: The field (JSONL) or column (Parquet, datasets) that holds the text.
        split: A dataset's split; null = its ``validation`` split when it has one, else ``train``.
        hf_config: The Hugging Face dataset's configuration (subset) name, if it has several.
        stride: Tokens between window starts (1 .. block_size); each token is scored once, with up
            to block_size - stride tokens of context before it. null = block_size (disjoint
            windows, as fit's validation).
        batch_size: Windows per forward pass.
        max_tokens: Score only the first max_tokens tokens (null = all). fit's validation with
            limit_val_batches=L scores L x batch_size x block_size. Reading the corpus stops once
            enough tokens are encoded.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        tokenizer: A tokenizers JSON file overriding the one stored in the checkpoint.
        json: Also write the figures to this JSON file (its folder must exist and be writable: checked
            before any work).
        progress: Progress bars on stderr.
        skip_bad_records: Skip records whose text is null, not a string or missing (else an error
            naming the first).
    """
    _check_settings(batch_size, max_tokens, stride, json)  # before the model is loaded or the corpus read
    model, tok = load_model_and_tokenizer(checkpoint, tokenizer, resolve_device(device))
    block = model.cfg.block_size
    _check_stride(stride, block)
    opts = ReadOptions(
        text_field=text_field, hf_config=hf_config, hf_split=split or "train", skip_bad_records=skip_bad_records,
        names=EVAL_NAMES,
    )
    with tempfile.TemporaryDirectory(prefix="gptmini-eval-") as tmp:
        tokens = _read_tokens(data, tok, opts, split, max_tokens, Path(tmp), progress)
        score = _score(model, tok, tokens, stride, batch_size, progress)
        del tokens  # the memmap, before its folder goes
    result = _result(checkpoint, data, score, block, stride)
    _print_score(score, block, stride)
    if json:
        write_text(Path(json).expanduser(), jsonlib.dumps(result, indent=2) + "\n")
    return result


def _check_settings(batch_size: int, max_tokens: int | None, stride: int | None, json: str | None) -> None:
    """Raises a ConfigError for a setting that is wrong whatever the model: checked before any work."""
    if batch_size < 1:
        raise ConfigError(f"--batch_size must be >= 1, got {batch_size}.")
    if max_tokens is not None and max_tokens < 1:
        raise ConfigError(f"--max_tokens must be >= 1 (or null: every token), got {max_tokens}.")
    if stride is not None and stride < 1:
        raise ConfigError(f"--stride must be >= 1 (at most the model's block_size; null = block_size), got {stride}.")
    if json:
        _check_json_path(Path(json).expanduser())


def _check_stride(stride: int | None, block: int) -> None:
    """Raises a ConfigError when --stride exceeds the model's block_size (known once it is loaded)."""
    if stride is not None and stride > block:
        raise ConfigError(
            f"--stride must be between 1 and the model's block_size {block} (null = {block}), got {stride}."
        )


def _read_tokens(
    data, tok, opts: ReadOptions, split: str | None, max_tokens: int | None, tmp: Path, progress: bool
) -> np.ndarray:
    """The tokens to score: a prepared token file or the corpus encoded into ``tmp``, cut to max_tokens + 1."""
    if isinstance(data, str) and data.endswith(TOKEN_FILE_SUFFIX) and Path(data).expanduser().is_file():
        tokens = _token_file(Path(data).expanduser(), tok)
    else:
        limit = None if max_tokens is None else max_tokens + 1  # + 1: the last target
        tokens = _encode_corpus(data, tok, opts, split, tmp / "tokens.bin", progress, limit)
    if max_tokens is not None:
        tokens = tokens[: max_tokens + 1]
    return tokens


def _score(model, tok, tokens: np.ndarray, stride: int | None, batch_size: int, progress: bool) -> Score:
    """The model's score on ``tokens``, under a progress bar on stderr (in tokens)."""
    from tqdm.auto import tqdm

    with tqdm(
        total=len(tokens) - 1, desc="gptmini eval", unit="tok", unit_scale=True, file=sys.stderr,
        disable=not progress,
    ) as bar:
        return score_tokens(
            model, tokens, stride=stride, batch_size=batch_size, byte_table=token_byte_lengths(tok),
            progress=bar.update,
        )


def _result(checkpoint: str, data, score: Score, block: int, stride: int | None) -> dict:
    """The figures evaluate returns and writes to --json."""
    return {
        "checkpoint": str(checkpoint),
        "data": data if data is not None else "embedded corpus",
        "tokens": score.tokens,
        "bytes": score.bytes,
        "windows": score.windows,
        "block_size": block,
        "stride": stride or block,
        "loss": score.loss,
        "ppl": score.ppl,
        "bpb": score.bpb,
    }


def _print_score(score: Score, block: int, stride: int | None) -> None:
    """Prints the figures on stdout, one per line."""
    bpb = f"{score.bpb:.4f} bits/byte ({score.bytes:,} bytes)" if score.bpb is not None else "n/a (tokenizer not byte-level)"
    print(f"tokens  {score.tokens:,} in {score.windows:,} windows of {block} (stride {stride or block})")
    print(f"loss    {score.loss:.4f} nats/token")
    print(f"ppl     {score.ppl:.2f}")
    print(f"bpb     {bpb}")


def main(args: list[str] | None = None) -> dict:
    return command_main(evaluate, args, "gptmini eval")


if __name__ == "__main__":
    main()
