"""The README.md model card of an export folder: what the model is, how it was trained, how to load it. No Lightning.

Everything comes from the checkpoint: the model config, ``global_step``, the run record that
``GPTMiniModule`` saves (tokens seen, every validation's val/loss and val/bpb, the corpus's
meta.json figures; ``formats.CKPT_RUN_STATE``) and the resolved config the CLI saves
(``formats.CKPT_RUN_CONFIG``).
A figure the checkpoint does not hold (one written before gptmini recorded it) reads "not recorded".
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from gptmini.core.formats import CKPT_RUN_CONFIG, CKPT_RUN_STATE, CKPT_STEP, MODEL_CODE_FILE
from gptmini.core.sources import default_corpus

NOT_RECORDED = "not recorded"
# gptmini is installed from its source: the name "gptmini" on the public package index is not this project's.
INSTALL = (
    "installed from its source, not from PyPI, where this project does not own the name `gptmini`: "
    "clone gptmini's git repository, then `pip install ./gptmini`"
)


def _corpus_notice() -> str:
    return (resources.files("gptmini.corpus") / "NOTICE").read_text(encoding="utf-8").strip()


def _is_embedded(source: str) -> bool:
    try:
        return Path(source).resolve() == default_corpus().resolve()
    except OSError:
        return False


def _val(entry: dict[str, Any] | None) -> str:
    if not entry:
        return NOT_RECORDED
    bpb = entry.get("val/bpb")
    bpb_text = f", val/bpb {bpb:.4f}" if bpb is not None else ""
    return f"val/loss {entry['val/loss']:.4f}{bpb_text} (step {entry['step']})"


def _corpus_lines(corpus: dict[str, Any]) -> list[str]:
    sources = [s.get("source", "?") for s in corpus.get("sources") or []]
    if not sources:
        return [f"- sources: {NOT_RECORDED}"]
    lines = []
    for src in sources:
        name = "the embedded Shakespeare corpus (gptmini/corpus, nine plays)" if _is_embedded(src) else f"`{src}`"
        lines.append(f"- source: {name}")

    def n(key: str) -> str:
        return f"{corpus[key]:,}" if isinstance(corpus.get(key), int) else NOT_RECORDED

    lines.append(f"- tokens: {n('train_tokens')} train, {n('val_tokens')} validation ({corpus.get('val_from') or '?'})")
    lines.append(f"- bytes of text: {n('train_bytes')} train, {n('val_bytes')} validation")
    lines.append(f"- tokenizer: {corpus.get('tokenizer') or NOT_RECORDED}")
    if all(_is_embedded(s) for s in sources):
        notice = "\n".join("  > " + line if line else "  >" for line in _corpus_notice().splitlines())
        lines.append("- licence (gptmini/corpus/NOTICE):\n\n" + notice)
    elif any(s.startswith("hf:") for s in sources):
        lines.append("- licence: see the dataset's card on the Hugging Face Hub (not recorded here)")
    else:
        lines.append("- licence: not known to gptmini; see the corpus's own terms")
    return lines


def model_card(
    name: str, cfg: dict[str, Any], n_params: int, ckpt: dict[str, Any] | None, source: str
) -> str:
    """The model card's Markdown. ``cfg`` is the ModelConfig as a dict, ``ckpt`` the checkpoint
    (None when exporting from an export folder without a card)."""
    ckpt = ckpt or {}
    run = ckpt.get(CKPT_RUN_STATE) or {}
    lines = [
        f"# {name}",
        "",
        f"A GPTMini language model (decoder-only transformer, RMSNorm, RoPE) trained with gptmini, "
        f"exported from `{source}`.",
        "",
        *_model_lines(cfg, n_params, ckpt, run),
        "",
        "## Corpus",
        "",
        *_corpus_lines(run.get("corpus") or {}),
        "",
        "## Config",
        "",
        _config_block(ckpt.get(CKPT_RUN_CONFIG)),
        "",
        *_gptmini_load_lines(name),
        "",
        *_standalone_load_lines(name),
        "",
    ]
    return "\n".join(lines)


def _model_lines(cfg: dict[str, Any], n_params: int, ckpt: dict[str, Any], run: dict[str, Any]) -> list[str]:
    """The "Model" section: shape, parameters, steps, tokens seen, final and best validation."""
    history = run.get("val") or []
    final = history[-1] if history else None
    best = min(history, key=lambda e: e["val/loss"]) if history else None  # BestCheckpoint's rule
    steps = ckpt.get(CKPT_STEP)
    tokens = run.get("tokens_seen")
    shape = (
        f"d{cfg['n_embd']} L{cfg['n_layer']} H{cfg['n_head']}, vocab {cfg['vocab_size']}, "
        f"context {cfg['block_size']}"
    )
    return [
        "## Model",
        "",
        "| | |",
        "|---|---|",
        f"| shape | {shape} |",
        f"| parameters | {n_params:,} ({n_params / 1e6:.2f}M; the embedding and output head share one matrix) |",
        f"| steps | {steps if steps is not None else NOT_RECORDED} |",
        f"| tokens seen | {f'{tokens:,}' if tokens else NOT_RECORDED} |",
        f"| final | {_val(final)} |",
        f"| best | {_val(best)} |",
        "",
        "val/loss is in nats per token; val/bpb is bits per UTF-8 byte of the validation text, "
        "comparable across tokenizers.",
    ]


def _config_block(config: Any) -> str:
    """The run's resolved config as a YAML block, or a line saying the checkpoint does not hold it."""
    return (
        f"```yaml\n{config.rstrip()}\n```"
        if isinstance(config, str)
        else "The run's resolved config is not in the checkpoint (a run not started by the gptmini CLI); "
        "the model's shape is in `config.json`."
    )


def _gptmini_load_lines(name: str) -> list[str]:
    """The "Load it" section's start: loading the folder with gptmini (CLI and Python)."""
    return [
        "## Load it",
        "",
        f"With gptmini ({INSTALL}):",
        "",
        "```bash",
        f'gptmini generate {name} --prompt "ROMEO:"',
        f"gptmini eval {name} --data my_text.txt",
        "```",
        "",
        "```python",
        "from gptmini.core.checkpoint import load_model_and_tokenizer",
        "",
        f'model, tok = load_model_and_tokenizer("{name}")',
        "```",
    ]


def _standalone_load_lines(name: str) -> list[str]:
    """The recipe loading the folder with torch, safetensors and tokenizers alone (its own model code)."""
    return [
        f"With torch, safetensors and tokenizers alone (`pip install torch safetensors tokenizers`): the folder "
        f"carries the model's code, `{MODEL_CODE_FILE}` (generated from gptmini/core/model.py; no "
        f"gptmini, no Lightning). From the folder's parent:",
        "",
        "```python",
        "import json",
        "import sys",
        "",
        "import torch",
        "from safetensors.torch import load_model",
        "from tokenizers import Tokenizer",
        "",
        f'sys.path.insert(0, "{name}")  # the folder: its {MODEL_CODE_FILE}',
        f"from {Path(MODEL_CODE_FILE).stem} import GPTMini, ModelConfig",
        "",
        f'model = GPTMini(ModelConfig(**json.load(open("{name}/config.json"))))',
        f'load_model(model, "{name}/model.safetensors")  # restores the shared embedding/head matrix',
        f'tok = Tokenizer.from_file("{name}/tokenizer.json")',
        'ids = torch.tensor([tok.encode("ROMEO:").ids])',
        "logits, _ = model.eval()(ids)  # (1, T, vocab): the next token's scores at each position",
        "```",
    ]
