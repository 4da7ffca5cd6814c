"""Segment Anything: a stateless backend over transformers' ``SamModel`` (``SamBackend``: encode, then
predict with the embedding) and the stateful ``SamPredictor`` over it (set_image, then predict)."""

from vlmsam.sam.backend import ImageEmbedding, SamBackend, SamPrediction
from vlmsam.sam.checkpoints import convert_meta_state_dict, load_sam_model, sam_config_from_meta_state_dict
from vlmsam.sam.predictor import SamPredictor


def load_sam_backend(name_or_path, *, device=None, dtype=None):
    """SAM (``SamBackend``: a Meta .pth, a transformers directory or hub id), SAM 2 (``Sam2Backend``:
    a ``sam2`` directory or hub id such as ``facebook/sam2.1-hiera-large``) or SAM 3 (``Sam3Backend``:
    ``facebook/sam3`` or a directory), chosen by the model's config."""
    import json
    from pathlib import Path

    config = Path(str(name_or_path)) / "config.json"
    model_type = None
    if config.is_file():
        try:
            model_type = json.loads(config.read_text()).get("model_type")
        except (OSError, ValueError):
            model_type = None
    elif not Path(str(name_or_path)).exists():  # a hub id like facebook/sam2.1-hiera-large or facebook/sam3
        lowered = str(name_or_path).lower()
        model_type = "sam3" if "sam3" in lowered else "sam2" if "sam2" in lowered else None
    if model_type in ("sam3", "sam3_video"):
        from vlmsam.sam.sam3_backend import Sam3Backend

        return Sam3Backend.from_pretrained(name_or_path, device=device, dtype=dtype)
    if model_type in ("sam2", "sam2_video"):
        from vlmsam.sam.sam2_backend import Sam2Backend

        return Sam2Backend.from_pretrained(name_or_path, device=device, dtype=dtype)
    return SamBackend.from_pretrained(name_or_path, device=device, dtype=dtype)


__all__ = [
    "load_sam_backend",
    "ImageEmbedding",
    "SamBackend",
    "SamPrediction",
    "SamPredictor",
    "convert_meta_state_dict",
    "load_sam_model",
    "sam_config_from_meta_state_dict",
]
