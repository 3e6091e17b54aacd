"""Weight conversion into selftok-hf models: official Selftok checkpoints and SD3 initialisation.

The model files hold the models only (they ship as remote code); the key and shape mappings live here:
``decoder`` (the official decoder and renderer, SD3 -> decoder) and ``convert_selftok_checkpoint`` (the tokenizer's
mapping and ``selftok-convert``, which writes a whole pipeline folder).
"""

from .decoder import (
    convert_official_decoder_state_dict,
    convert_official_renderer_state_dict,
    decoder_config_from_official_state_dict,
    decoder_state_dict_from_sd3,
    renderer_config_from_official_state_dict,
)

__all__ = [
    "convert_official_decoder_state_dict",
    "convert_official_renderer_state_dict",
    "decoder_config_from_official_state_dict",
    "renderer_config_from_official_state_dict",
    "decoder_state_dict_from_sd3",
]
