"""Export a trained model: ``gptmini export runs/tiny/version_0/checkpoints/last.ckpt tiny_model``.

Writes ``model.safetensors``, ``config.json``, ``tokenizer.json`` and a ``README.md`` model card
into the folder (see gptmini.core.export_folder and gptmini.core.model_card); ``gptmini generate FOLDER`` and ``gptmini.core.checkpoint.load_model(FOLDER)``
load it without Lightning or the data cache. ``--help`` lists every option.
"""

from __future__ import annotations

from pathlib import Path

from gptmini.core.export_folder import export_model
from gptmini.entry import command_main


def export(checkpoint: str, out_dir: str, tokenizer: str | None = None, overwrite: bool = False) -> Path:
    """Write a gptmini checkpoint as a folder with model.safetensors, config.json and tokenizer.json.

    Args:
        checkpoint: A ``.ckpt`` written by ``gptmini fit`` (e.g. runs/tiny/version_0/checkpoints/last.ckpt).
        out_dir: The folder to write (created; must hold nothing else).
        tokenizer: A tokenizers JSON file overriding the one stored in the checkpoint.
        overwrite: Replace an earlier export in out_dir.
    """
    out = export_model(checkpoint, out_dir, tokenizer, overwrite)
    for f in sorted(out.iterdir()):
        print(f"{f}  {f.stat().st_size / 1e6:.2f} MB")
    return out


def main(args: list[str] | None = None) -> Path:
    return command_main(export, args, "gptmini export")


if __name__ == "__main__":
    main()
