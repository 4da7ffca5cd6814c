"""SAM 3 (transformers' ``Sam3Model`` and ``Sam3TrackerModel``) behind the engine's SAM interface.

Two capabilities over one encoded image:

* :meth:`Sam3Backend.segment_phrases` — concept prompts: every instance of each noun phrase (masks,
  boxes in original pixels, scores), through SAM 3's DETR-style detector, its presence head and its
  mask head. ``k`` phrases on one image cost one vision pass and one batched detector call.
* :meth:`Sam3Backend.predict` — point and box prompts (SAM 2 style) through ``Sam3TrackerModel``, so
  designs that prompt a SAM with boxes run on SAM 3 unchanged.

The ViT backbone (most of SAM 3's compute) runs once per image in :meth:`Sam3Backend.encode`; the
detector's FPN neck runs with it, the tracker's neck only when a point/box prompt first needs it.
The detector and the tracker of the released checkpoint share one backbone (transformers maps the
detector's weights into the tracker), so the backend shares the module instead of holding two copies.

transformers' ``Sam3ImageProcessor`` needs torchvision, so pre- and post-processing are ours, written
from Meta's ``sam3`` (``sam3/model/sam3_image_processor.py``): RGB in [0, 1], resized to the model's
square input (1008², bilinear with antialiasing, aspect ratio not kept), normalised with mean = std =
0.5; score = sigmoid(class logit) x sigmoid(presence logit), kept above the confidence threshold (0.5);
mask logits resized bilinearly to the original size, *then* squashed and thresholded at 0.5 (Meta's
order; transformers' ``post_process_instance_segmentation`` resizes probabilities instead, which moves
boundary pixels). ``tests/test_sam3.py`` checks each step against that source.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from vlmsam.errors import CheckpointError, PromptError, first_line
from vlmsam.io.images import ImageSource, image_key, load_image
from vlmsam.sam.backend import MASK_THRESHOLD, SamPrediction, require_embedding
from vlmsam.sam.sam2_backend import SquareInputBackend, square_prompts

MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
TEXT_LENGTH = 32  # tokens per phrase, padded, as Meta's and transformers' processors
SCORE_THRESHOLD = 0.5  # Meta's Sam3Processor confidence_threshold
PHRASE_MASK_THRESHOLD = 0.5  # on mask probabilities
SHARED_MARKER = "shares_detector_backbone.txt"


@dataclass
class Sam3Embedding:
    """One image as SAM 3 sees it: the ViT's output grid (shared by both heads), the detector's FPN,
    and the tracker's features once a point/box prompt has needed them."""

    backbone: torch.Tensor  # (1, C, g, g)
    vision: object  # transformers' Sam3VisionEncoderOutput for the detector
    original_size: tuple[int, int]
    key: str = ""
    tracker: list | None = field(default=None, repr=False)


@dataclass
class Sam3Instances:
    """Every instance SAM 3 found for one phrase, best first: ``masks (N, H, W) bool``, ``boxes (N, 4)``
    XYXY original pixels, ``scores (N,)`` (class x presence), the image's ``presence`` score, and each
    instance's detector ``queries`` index (Meta's processor keeps query order; we sort by score)."""

    phrase: str
    masks: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    presence: float
    queries: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.scores)


def sam3_pixels(image, size: int) -> torch.Tensor:
    """``(1, 3, size, size)`` float pixels of an RGB image, as Meta's SAM 3 preprocesses them."""
    rgb = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)[None]
    resized = F.interpolate(rgb.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    resized = resized.round().clamp(0, 255) / 255.0  # v2.Resize on a uint8 image returns uint8
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (resized - mean) / std


def box_xyxy_to_cxcywh_normalized(boxes: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """Exemplar boxes as SAM 3's geometry encoder takes them: (cx, cy, w, h) in [0, 1]."""
    h, w = size
    b = torch.as_tensor(np.asarray(boxes, np.float32)).reshape(-1, 4) / torch.tensor([w, h, w, h], dtype=torch.float32)
    return torch.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], dim=-1)


class Sam3Backend(SquareInputBackend):
    """SAM 3 with :class:`SamBackend`'s stateless interface plus phrases.

    >>> sam3 = Sam3Backend.from_pretrained("facebook/sam3")
    >>> emb = sam3.encode("kitchen.jpg")
    >>> knives, boards = sam3.segment_phrases(emb, ["knife", "cutting board"])  # one vision pass
    >>> sam3.predict(emb, boxes=[[10, 20, 200, 240]]).masks.shape                 # (1, 1, H, W)
    """

    def __init__(self, model, tokenizer, tracker=None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.tracker = tracker.eval() if tracker is not None else None
        if self.tracker is not None and _same_weights(self.tracker.vision_encoder.backbone, self.model.vision_encoder.backbone):
            self.tracker.vision_encoder.backbone = self.model.vision_encoder.backbone
        cfg = model.config.vision_config.backbone_config
        self.size = int(cfg.image_size[0] if isinstance(cfg.image_size, (list, tuple)) else cfg.image_size)
        self.patch = int(cfg.patch_size[0] if isinstance(cfg.patch_size, (list, tuple)) else cfg.patch_size)
        self.encoder_calls = 0  # ViT passes (a statistic: tests check k phrases cost one)

    @classmethod
    def from_pretrained(cls, name_or_path, *, device=None, dtype=None) -> Sam3Backend:
        """A hub id (``facebook/sam3``) or a directory: the detector and tokenizer from it, and the tracker
        from it too where it holds one (the released checkpoint, or a ``tracker/`` folder)."""
        from pathlib import Path

        from transformers import AutoTokenizer, Sam3Model, Sam3TrackerModel

        from vlmsam.hub import check_available

        name = str(name_or_path)
        check_available(name, "SAM 3")
        kwargs = {"dtype": dtype} if dtype else {}
        try:
            model = Sam3Model.from_pretrained(name, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(name)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{name}: not a SAM 3 model ({first_line(exc)})") from None
        tracker, shares = None, False
        tracker_dir = Path(name) / "tracker"
        if tracker_dir.is_dir():
            shares = (tracker_dir / SHARED_MARKER).is_file()
            try:
                tracker = Sam3TrackerModel.from_pretrained(str(tracker_dir), **kwargs)
            except (OSError, ValueError) as exc:
                raise CheckpointError(f"{tracker_dir}: not a SAM 3 tracker ({first_line(exc)})") from None
        elif _model_type(name) != "sam3":  # the released sam3_video checkpoint holds both
            try:
                tracker = Sam3TrackerModel.from_pretrained(name, **kwargs)
            except (OSError, ValueError):
                tracker = None
        if shares:  # saved without its copy of the detector's ViT (save_pretrained)
            tracker.vision_encoder.backbone = model.vision_encoder.backbone
        backend = cls(model, tokenizer, tracker)
        if device is not None:
            backend.to(device)
        return backend

    def to(self, device):
        if self.tracker is not None:
            self.tracker.to(device)
        return super().to(device)

    # ---- once per image ---------------------------------------------------------------------

    def encode(self, image: ImageSource) -> Sam3Embedding:
        """The ViT and the detector's FPN for ``image``; the tracker's features come later, lazily."""
        from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

        image = load_image(image)
        pixels = sam3_pixels(image, self.size).to(self.device, self.dtype)
        vision = self.model.vision_encoder
        with torch.inference_mode():
            tokens = vision.backbone(pixels).last_hidden_state
            g = self.size // self.patch
            grid = tokens.view(1, g, g, -1).permute(0, 3, 1, 2)
            fpn, pos = vision.neck(grid)
        self.encoder_calls += 1
        out = Sam3VisionEncoderOutput(last_hidden_state=tokens, fpn_hidden_states=fpn, fpn_position_encoding=pos)
        return Sam3Embedding(grid, out, (image.height, image.width), image_key(image))

    # ---- phrases ----------------------------------------------------------------------------

    def tokenize(self, phrases: list[str]) -> dict:
        enc = self.tokenizer([p.strip().lower() for p in phrases], padding="max_length", max_length=TEXT_LENGTH,
                             truncation=True, return_tensors="pt")
        return {"input_ids": enc["input_ids"].to(self.device), "attention_mask": enc["attention_mask"].to(self.device)}

    def detector_outputs(self, embedding: Sam3Embedding, phrases: list[str], exemplars=None, exemplar_labels=None):
        """SAM 3's raw outputs for ``phrases`` on one encoded image (a batch of ``len(phrases)``)."""
        embedding = require_embedding(embedding, Sam3Embedding)
        k = len(phrases)
        vision = type(embedding.vision)(
            last_hidden_state=embedding.vision.last_hidden_state.expand(k, -1, -1),
            fpn_hidden_states=tuple(t.expand(k, -1, -1, -1) for t in embedding.vision.fpn_hidden_states),
            fpn_position_encoding=tuple(t.expand(k, -1, -1, -1) for t in embedding.vision.fpn_position_encoding))
        kwargs = self.tokenize(phrases)
        if exemplars is not None and len(exemplars):
            import importlib.util

            if importlib.util.find_spec("torchvision") is None:  # SAM 3's geometry encoder pools with roi_align
                raise PromptError("exemplar boxes need torchvision (SAM 3 pools them with its roi_align): pip install torchvision")
            boxes = box_xyxy_to_cxcywh_normalized(exemplars, embedding.original_size)
            labels = torch.ones(len(boxes), dtype=torch.long) if exemplar_labels is None else \
                torch.as_tensor(np.asarray(exemplar_labels, np.int64)).reshape(-1)
            if len(labels) != len(boxes):
                raise PromptError(f"{len(labels)} exemplar labels for {len(boxes)} exemplar boxes: give one label (1 or 0) per box")
            kwargs["input_boxes"] = boxes[None].expand(k, -1, -1).to(self.device, self.dtype)
            kwargs["input_boxes_labels"] = labels[None].expand(k, -1).to(self.device)
        with torch.inference_mode():
            return self.model(vision_embeds=vision, **kwargs)

    def segment_phrases(self, embedding: Sam3Embedding, phrases: list[str], *, exemplars=None, exemplar_labels=None,
                        threshold: float = SCORE_THRESHOLD, mask_threshold: float = PHRASE_MASK_THRESHOLD) -> list[Sam3Instances]:
        """Every instance of each phrase, as :class:`Sam3Instances` (one per phrase, in order). ``exemplars``:
        XYXY boxes in original pixels that show the concept (labels 1) or what it is not (labels 0); with
        exemplars only, pass the phrase ``"visual"`` (what Meta's processor sends in place of text)."""
        phrases = [str(p) for p in phrases]
        if not phrases:
            return []
        if any(not p.strip() for p in phrases):
            raise PromptError("a phrase is empty: name what to segment, e.g. 'red circle'")
        out = self.detector_outputs(embedding, phrases, exemplars, exemplar_labels)
        return [self._instances(phrase, out, i, embedding.original_size, threshold, mask_threshold)
                for i, phrase in enumerate(phrases)]

    def segment_phrase(self, embedding: Sam3Embedding, phrase: str, **kwargs) -> Sam3Instances:
        return self.segment_phrases(embedding, [phrase], **kwargs)[0]

    @staticmethod
    def _instances(phrase, out, i, size, threshold, mask_threshold) -> Sam3Instances:
        h, w = size
        presence = out.presence_logits[i].float().sigmoid()
        scores = out.pred_logits[i].float().sigmoid() * presence
        keep = torch.nonzero(scores > threshold).flatten()
        keep = keep[torch.argsort(scores[keep], descending=True, stable=True)]
        boxes = out.pred_boxes[i, keep].float() * torch.tensor([w, h, w, h], dtype=torch.float32, device=scores.device)
        masks = torch.zeros((0, h, w), dtype=torch.bool)
        if len(keep):
            logits = F.interpolate(out.pred_masks[i, keep][None].float(), size=(h, w), mode="bilinear", align_corners=False)[0]
            masks = logits.sigmoid() > mask_threshold
        return Sam3Instances(phrase, masks.cpu().numpy(), boxes.cpu().numpy().astype(np.float32),
                             scores[keep].cpu().numpy().astype(np.float32), float(presence), keep.cpu().numpy())

    # ---- points and boxes (the tracker) ---------------------------------------------------------

    def tracker_features(self, embedding: Sam3Embedding) -> list:
        """The tracker's image embeddings from the shared backbone grid (what ``get_image_embeddings``
        computes from pixels), made once per encoded image."""
        if self.tracker is None:
            raise PromptError("this SAM 3 has no tracker (Sam3TrackerModel), so it takes phrases only, not points or boxes")
        if embedding.tracker is None:
            with torch.inference_mode():
                maps, _ = self.tracker.vision_encoder.neck(embedding.backbone)
                # the levels the decoder uses (its neck may make a coarser fourth), then "no memory" on the last of
                # them, as Meta's sam3_image.py does (transformers' image path adds it before cutting)
                maps = list(maps[:len(self.tracker.backbone_feature_sizes)])
                maps[0] = self.tracker.mask_decoder.conv_s0(maps[0])
                maps[1] = self.tracker.mask_decoder.conv_s1(maps[1])
                maps[-1] = maps[-1] + self.tracker.no_memory_embedding.view(1, -1, 1, 1)
            embedding.tracker = maps
        return embedding.tracker

    def predict(self, embedding: Sam3Embedding, *, boxes=None, points=None, point_labels=None, mask_input=None,
                multimask_output: bool = False) -> SamPrediction:
        """Masks from XYXY ``boxes (N, 4)`` and/or ``points (N, P, 2)`` in original pixels (as SamBackend)."""
        embedding = require_embedding(embedding, Sam3Embedding)
        if mask_input is not None:
            raise PromptError("mask prompts are not supported with SAM 3 here")
        kwargs = square_prompts(self.size, embedding.original_size, self.device, self.dtype, boxes, points, point_labels)
        features = self.tracker_features(embedding)
        h, w = embedding.original_size
        with torch.inference_mode():
            out = self.tracker(image_embeddings=features, multimask_output=multimask_output, **kwargs)
            low = out.pred_masks[0].float()
            logits = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
        return SamPrediction(logits > MASK_THRESHOLD, out.iou_scores[0].float(), low)

    def save_pretrained(self, path, state_dict: dict | None = None) -> None:
        from pathlib import Path

        self.model.save_pretrained(path, state_dict=state_dict)
        self.tokenizer.save_pretrained(path)
        if self.tracker is not None:
            shared = self.tracker.vision_encoder.backbone is self.model.vision_encoder.backbone
            state = {k: v for k, v in self.tracker.state_dict().items() if not (shared and k.startswith("vision_encoder.backbone."))}
            out = Path(path) / "tracker"
            self.tracker.save_pretrained(out, state_dict=state)
            if shared:  # one copy of the ViT on disk too: the loader gives the tracker the detector's
                (out / SHARED_MARKER).write_text("the tracker's vision_encoder.backbone is the detector's (model.safetensors above)\n")


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]) for k in sa)


def _model_type(name: str) -> str | None:
    import json
    from pathlib import Path

    config = Path(name) / "config.json"
    try:
        return json.loads(config.read_text()).get("model_type") if config.is_file() else None
    except (OSError, ValueError):
        return None
