"""selftok-hf: Selftok (arXiv 2505.07538) discrete visual tokens in the Hugging Face ecosystem.

Importing the package registers the Selftok classes with the transformers Auto classes.
"""

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoProcessor
from transformers.utils import is_torchvision_available

from .configuration_selftok import SELFTOK_RELEASE_CONFIG, SELFTOK_TINY_CONFIG, SelftokConfig
from .image_processing_selftok import SelftokImageProcessor, SelftokImageProcessorPil
from .modeling_selftok import SelftokEncoderOutput, SelftokModel, SelftokModelOutput
from .modeling_selftok_decoder import SelftokDecoderTransformer, SelftokRenderer
from .pipeline_selftok_decoder import SelftokDecoderPipeline
from .token_schedule import TokenSchedule, to_ar_order, to_code_order
from .visual_vocabulary import VisualVocabulary
from .modeling_selftok_lm import add_visual_tokens
from .processing_selftok import SelftokProcessor
from .generation_selftok import SelftokVisualGrammarLogitsProcessor, generate_image_tokens
from .pipeline_selftok import SelftokPipeline, SelftokPipelineOutput
from .training.dataset_tokenization import tokenize_dataset
from .utils.moved import install as _install_moved_modules

__version__ = "0.1.0"

# The modules that moved into subpackages (issue 17) stay importable under their old paths for a release, with a
# FutureWarning (see utils/moved.py).
_install_moved_modules()

AutoConfig.register("selftok", SelftokConfig, exist_ok=True)
AutoModel.register(SelftokConfig, SelftokModel, exist_ok=True)
# The torchvision backend only where torchvision is installed: otherwise AutoImageProcessor(backend="torchvision")
# (or use_fast=True) falls back to the PIL backend with transformers' own warning, as for its built-in processors.
AutoImageProcessor.register(
    SelftokConfig,
    image_processor_classes={"pil": SelftokImageProcessorPil, "torchvision": SelftokImageProcessor}
    if is_torchvision_available()
    else {"pil": SelftokImageProcessorPil},
    exist_ok=True,
)
# `auto_map` entries written on save_pretrained, so saved folders load with trust_remote_code=True
# in a process that never imported selftok_hf.
SelftokConfig.register_for_auto_class()
SelftokModel.register_for_auto_class("AutoModel")
SelftokImageProcessor.register_for_auto_class()
SelftokImageProcessorPil.register_for_auto_class()
# The VLM processor: found by name (processor_config.json) by AutoProcessor in an LM folder.
AutoProcessor.register(SelftokConfig, SelftokProcessor, exist_ok=True)
SelftokProcessor.register_for_auto_class()

__all__ = [
    "SelftokConfig",
    "SelftokModel",
    "SelftokEncoderOutput",
    "SelftokModelOutput",
    "SelftokImageProcessor",
    "SelftokDecoderTransformer",
    "SelftokRenderer",
    "SelftokDecoderPipeline",
    "SelftokImageProcessorPil",
    "TokenSchedule",
    "to_ar_order",
    "to_code_order",
    "SELFTOK_RELEASE_CONFIG",
    "SELFTOK_TINY_CONFIG",
    "VisualVocabulary",
    "add_visual_tokens",
    "SelftokProcessor",
    "SelftokVisualGrammarLogitsProcessor",
    "generate_image_tokens",
    "SelftokPipeline",
    "SelftokPipelineOutput",
    "tokenize_dataset",
]
