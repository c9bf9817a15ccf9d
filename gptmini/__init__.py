"""gptmini: pretrain small GPT models with the standard recipe, on Lightning."""

from typing import Any

from gptmini.core import __version__

__all__ = ["GPTMini", "ModelConfig", "__version__"]


def __getattr__(name: str) -> Any:
    """``gptmini.GPTMini`` and ``gptmini.ModelConfig``, imported on first use (PEP 562): importing
    a torch-free part (``gptmini.tools.curves``, ``gptmini.core.sources``) does not import torch (~1 s)."""
    if name in ("GPTMini", "ModelConfig"):
        from gptmini.core.startup import collector_paused

        with collector_paused():  # torch's import: ~1 s less CPU per process (gptmini.core.startup)
            from gptmini.core import model
        return getattr(model, name)
    raise AttributeError(f"module 'gptmini' has no attribute {name!r}")
