"""The ``seg_token`` design as the registry knows it (entry point ``vlmsam.designs``)."""

from __future__ import annotations

from vlmsam.engine.spec import BuildSpec, Design, TrainingSpec
from vlmsam.seg_token.config import SegTokenConfig


def _build(spec: BuildSpec):
    from vlmsam.seg_token.segmenter import build

    return build(spec)


def _model(config: SegTokenConfig):
    from vlmsam.seg_token.model import SegTokenModel

    return SegTokenModel.build(config)


def _segmenter(model):
    from vlmsam.seg_token.segmenter import SegTokenSegmenter

    return SegTokenSegmenter(model)


def _collator(model):
    return model.collator


def _answer_frame(model):
    return model.processor.resized_size


def _prepare(model, context) -> None:
    """With ``train.sam_embedding_cache``: fill the cache for every training image (sharded across ranks)
    and hand it to the model, which then reads SAM embeddings instead of running SAM's image encoder."""
    root = context.cfg.train.sam_embedding_cache
    if not root:
        return
    from vlmsam.distributed import barrier
    from vlmsam.errors import CheckpointError
    from vlmsam.sam.embedding_cache import SamEmbeddingCache

    if model.config.train_sam_image_encoder:
        raise CheckpointError("train.sam_embedding_cache needs a frozen SAM image encoder (model.train_sam_image_encoder=false)")
    cache, info = SamEmbeddingCache(root), context.info
    images = [ds.image_path(i) for family in context.mixture.families.values() for ds in family for i in range(len(ds))]
    cache.fill(model.sam_backend, images, info.rank, info.world_size, context.cfg.train.progress and info.is_main)
    barrier()
    model.use_sam_cache(cache)


def _checkpointing(model, enabled: bool) -> None:
    from vlmsam.vlm.runtime import set_gradient_checkpointing

    set_gradient_checkpointing(model.vlm, enabled)


DESIGN = Design(
    name="seg_token", build=_build, accepts=frozenset({"path", "vlm", "sam", "max_new_tokens"}),
    summary="a [SEG] token's hidden state prompts SAM (LISA)",
    training=TrainingSpec(config_class=SegTokenConfig, build=_model, collator=_collator, segmenter=_segmenter,
                          prepare=_prepare, answer_frame=_answer_frame, gradient_checkpointing=_checkpointing))
