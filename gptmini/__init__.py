"""gptmini: pretrain small GPT models with the standard recipe, on Lightning."""

from gptmini.core import __version__
from gptmini.core.startup import collector_paused

with collector_paused():  # torch's import: ~1 s less CPU per process (gptmini.core.startup)
    from gptmini.core.model import GPTMini, ModelConfig

__all__ = ["GPTMini", "ModelConfig", "__version__"]
