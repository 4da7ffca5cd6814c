"""The Segment Anything backend: transformers' ``SamModel`` behind a predictor-style API."""

from vlmsam.sam.backend import ImageEmbedding, SamBackend, SamPrediction
from vlmsam.sam.checkpoints import convert_meta_state_dict, load_sam_model, sam_config_from_meta_state_dict

__all__ = [
    "ImageEmbedding",
    "SamBackend",
    "SamPrediction",
    "convert_meta_state_dict",
    "load_sam_model",
    "sam_config_from_meta_state_dict",
]
