"""Text side of TAB pre-training: prompts (IDPA), frozen text encoders, class text prototypes.

Importing this package is cheap: torch, open_clip and sentence-transformers are
imported only when an encoder is built or features are computed.
"""

from tabad.text.encoders import (
    ENCODER_NAMES,
    ClipEncoder,
    MiniLMEncoder,
    TextEncoder,
    clip_weights_available,
    find_clip_weights,
    get_text_encoder,
)
from tabad.text.features import TextFeatures, class_text_features, compute_text_features, default_cache_dir
from tabad.text.prompts import (
    ABNORMAL_STATES,
    GENERIC_TEMPLATES,
    INDUSTRIAL_TEMPLATES,
    NORMAL_STATES,
    VARIANTS,
    build_prompts,
    load_class_name_mapping,
    prompts_hash,
    readable_class_name,
)

__all__ = [
    "ABNORMAL_STATES",
    "ENCODER_NAMES",
    "GENERIC_TEMPLATES",
    "INDUSTRIAL_TEMPLATES",
    "NORMAL_STATES",
    "VARIANTS",
    "ClipEncoder",
    "MiniLMEncoder",
    "TextEncoder",
    "TextFeatures",
    "build_prompts",
    "class_text_features",
    "clip_weights_available",
    "compute_text_features",
    "default_cache_dir",
    "find_clip_weights",
    "get_text_encoder",
    "load_class_name_mapping",
    "prompts_hash",
    "readable_class_name",
]
