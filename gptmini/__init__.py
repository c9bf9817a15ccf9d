"""gptmini: pretrain small GPT models with the standard recipe, on Lightning."""

from gptmini.core import __version__
from gptmini.core.model import GPTMini, ModelConfig

__all__ = ["GPTMini", "ModelConfig", "__version__"]
