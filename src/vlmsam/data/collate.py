"""Samples -> model inputs, through the VLM's processor and SAM's preprocessing.

:meth:`Collator.prepare` does the per-sample work (decode the image once; VLM patches, SAM pixels
and the token ids of every conversation from that one decoded image) and is meant to run in
DataLoader workers; :meth:`Collator.__call__` only pads and stacks. A design with per-sample inputs of
its own (stored proposals, another encoder's pixels) subclasses it and returns them from
:meth:`Collator.features`, so that they too are made in the workers and its ``forward`` takes tensors only.

A batch has one *row* per conversation and one *image* per sample: several conversations about
one image are separate rows that share the image's encodings. ``offsets[b]:offsets[b + 1]`` are
the rows of image ``b``; ``row_image[r]`` is the image of row ``r``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from vlmsam.data.sample import UNREADABLE_IMAGE, BadSample, Sample
from vlmsam.errors import ImageLoadError
from vlmsam.io.images import load_image
from vlmsam.sam.preprocess import sam_pixels
from vlmsam.vlm.processor import EncodedConversation, VlmProcessor

IGNORE_INDEX = -100


@dataclass
class Prepared:
    """One sample, decoded and tokenized."""

    sample: Sample
    rows: list[EncodedConversation]
    pixel_values: torch.Tensor  # VLM patches of the image
    image_grid_thw: torch.Tensor  # (1, 3)
    sam_pixels: torch.Tensor | None  # (3, S, S)
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    masks: torch.Tensor  # (N, H, W) uint8
    features: dict[str, torch.Tensor] = field(default_factory=dict)  # a design's own (Collator.features)


@dataclass
class Batch:
    input_ids: torch.Tensor  # (R, L), right-padded
    labels: torch.Tensor  # (R, L), -100 outside assistant answers
    attention_mask: torch.Tensor  # (R, L)
    row_image: torch.Tensor  # (R,)
    offsets: list[int]  # B + 1 row offsets
    pixel_values: torch.Tensor  # VLM patches of the B images, concatenated
    image_grid_thw: torch.Tensor  # (B, 3)
    sam_pixels: torch.Tensor | None  # (B, 3, S, S)
    original_sizes: list[tuple[int, int]]
    input_sizes: list[tuple[int, int]]
    masks: list[torch.Tensor]  # B tensors (N_b, H_b, W_b) uint8, one target per [SEG] of image b
    samples: list[Sample] = field(default_factory=list)
    skipped: list = field(default_factory=list)  # (source, path, reason) of bad samples passed over
    features: dict[str, list[torch.Tensor]] = field(default_factory=dict)  # per name, one tensor per image

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def row_pixel_values(self) -> torch.Tensor:
        """The VLM patches repeated per row (each row's image's patches, in row order), for models that
        take pixels per row rather than encoding each image once."""
        patches = torch.split(self.pixel_values, self.image_grid_thw.prod(-1).tolist())
        return torch.cat([patches[b] for b in self.row_image.tolist()])

    def to(self, device) -> Batch:
        move = lambda t: t.to(device) if isinstance(t, torch.Tensor) else t  # noqa: E731
        for name in ("input_ids", "labels", "attention_mask", "row_image", "pixel_values", "image_grid_thw", "sam_pixels"):
            setattr(self, name, move(getattr(self, name)))
        self.masks = [m.to(device) for m in self.masks]
        self.features = {name: [v.to(device) for v in values] for name, values in self.features.items()}
        return self


class Collator:
    """Args:
        processor: the VLM's :class:`VlmProcessor` (its tokenizer must know ``[SEG]``).
        sam_processor: SAM's image processor (``SamBackend.processor``), or None for no SAM inputs.
    """

    def __init__(self, processor: VlmProcessor, sam_processor=None):
        self.processor = processor
        self.sam_processor = sam_processor
        self.seg_token_id = processor.seg_token_id

    def drop_sam_pixels(self) -> None:
        """Stop preparing SAM's pixels (the model reads SAM embeddings from a cache instead)."""
        self.sam_processor = None

    def features(self, sample: Sample, image) -> dict[str, torch.Tensor]:
        """A design's own per-sample inputs from the decoded ``image`` (none here); a subclass returns
        them by name and the batch holds them as ``features[name]``, one tensor per image."""
        return {}

    def prepare(self, sample: Sample, image=None) -> Prepared:
        """Decode (unless ``image``, the decoded picture, is given), tokenize, and check the targets."""
        try:
            image = load_image(sample.image if image is None else image)
        except ImageLoadError as exc:
            raise BadSample(sample.where, f"unreadable image ({exc})", UNREADABLE_IMAGE) from None
        if sample.masks.shape[1:] != (image.height, image.width):
            raise BadSample(sample.where, f"masks are {sample.masks.shape[2]}x{sample.masks.shape[1]} "
                                          f"but the image is {image.width}x{image.height}")
        pixel_values, grid, n_tokens = self.processor.image_inputs(image)
        rows = [self.processor.encode(conv, image_inputs=(pixel_values, grid, n_tokens)) for conv in sample.conversations]
        n_seg = 0 if self.seg_token_id is None else sum(int((r.input_ids == self.seg_token_id).sum()) for r in rows)
        if n_seg != len(sample.masks):
            raise BadSample(sample.where, f"{n_seg} [SEG] token(s) in the answers but {len(sample.masks)} target mask(s)")
        sam = original = resized = None
        if self.sam_processor is not None:
            sam, original, resized = sam_pixels(self.sam_processor, image)
        return Prepared(sample, rows, pixel_values, grid, sam[0] if sam is not None else None,
                        original or (image.height, image.width), resized or (image.height, image.width),
                        torch.from_numpy(np.ascontiguousarray(sample.masks)), self.features(sample, image))

    def __call__(self, items: list[Prepared | Sample]) -> Batch:
        items = [it if isinstance(it, Prepared) else self.prepare(it) for it in items]
        rows = [(b, r) for b, it in enumerate(items) for r in it.rows]
        length = max(len(r.input_ids) for _, r in rows)
        pad = self.processor.tokenizer.pad_token_id
        input_ids = torch.full((len(rows), length), pad, dtype=torch.long)
        labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(rows), length), dtype=torch.long)
        for k, (_, r) in enumerate(rows):  # right padding: pads carry no label and no attention
            n = len(r.input_ids)
            input_ids[k, :n], labels[k, :n], attention[k, :n] = r.input_ids, r.labels, 1
        offsets = np.cumsum([0] + [len(it.rows) for it in items]).tolist()
        skipped = [s for it in items for s in it.sample.meta.get("skipped", [])]
        return Batch(
            input_ids=input_ids,
            labels=labels,
            attention_mask=attention,
            row_image=torch.tensor([b for b, _ in rows], dtype=torch.long),
            offsets=offsets,
            pixel_values=torch.cat([it.pixel_values for it in items]),
            image_grid_thw=torch.cat([it.image_grid_thw for it in items]),
            sam_pixels=torch.stack([it.sam_pixels for it in items]) if items[0].sam_pixels is not None else None,
            original_sizes=[it.original_size for it in items],
            input_sizes=[it.input_size for it in items],
            masks=[it.masks for it in items],
            samples=[it.sample for it in items],
            skipped=skipped,
            features={name: [it.features[name] for it in items] for name in items[0].features},
        )
