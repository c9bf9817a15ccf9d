"""gptmini: pretrain small GPT models with the standard recipe, on Lightning."""

from gptmini.core.model import GPTMini, ModelConfig

__version__ = "0.1.0"
__all__ = ["GPTMini", "ModelConfig", "__version__"]
