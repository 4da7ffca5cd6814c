"""SAM 3 through transformers' Sam3Model / Sam3TrackerModel with our own pre- and post-processing
(Sam3ImageProcessor needs torchvision; Meta's ``sam3`` package imports triton and decord and assumes
CUDA, so it cannot run here).

Each step is checked against Meta's definition, written out below from
facebookresearch/sam3 @ 99d02f2, ``sam3/model/sam3_image_processor.py`` (``Sam3Processor.transform``
and ``_forward_grounding``), on tiny random models of the real classes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vlmsam.engine.registry import design
from vlmsam.engine.spec import BuildSpec
from vlmsam.errors import CheckpointError, PromptError
from vlmsam.sam import load_sam_backend
from vlmsam.sam.sam3_backend import Sam3Backend, box_xyxy_to_cxcywh_normalized, sam3_pixels
from vlmsam.sam.sam3_tiny import build_tiny_sam3

pytestmark = pytest.mark.usefixtures("one_thread")
PHRASES = ["red circle", "blue stars", "hexagon", "a purple zebra"]


# ---- Meta's definition (sam3/model/sam3_image_processor.py), as the reference --------------------------

def meta_pixels(image: Image.Image, resolution: int) -> torch.Tensor:
    """v2.functional.to_image -> ToDtype(uint8) -> Resize((r, r)) -> ToDtype(float32, scale) -> Normalize(0.5, 0.5).
    Resize of a uint8 tensor off the CPU (Meta runs on CUDA): to float, bilinear with antialias, round, uint8."""
    t = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)
    r = F.interpolate(t[None].float(), size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)
    r = r.round_().clamp_(0, 255).to(torch.uint8)
    return ((r.float() / 255.0) - 0.5) / 0.5


def meta_grounding(out, i: int, h: int, w: int, threshold: float):
    """_forward_grounding on transformers' outputs (whose boxes are already XYXY): kept in query order."""
    probs = out.pred_logits[i].sigmoid() * out.presence_logits[i].sigmoid()
    keep = probs > threshold
    boxes = out.pred_boxes[i][keep] * torch.tensor([w, h, w, h])[None, :]
    masks = F.interpolate(out.pred_masks[i][keep].unsqueeze(1), (h, w), mode="bilinear", align_corners=False).sigmoid()
    return torch.nonzero(keep).flatten(), probs[keep], boxes, (masks > 0.5)[:, 0]


# ---- fixtures ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sam3():
    return build_tiny_sam3(seed=0)


@pytest.fixture(scope="module")
def saved(sam3, tmp_path_factory):
    path = tmp_path_factory.mktemp("sam3") / "sam3"
    sam3.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    img = (rng.random((90, 130, 3)) * 255).astype(np.uint8)
    img[20:60, 30:80] = (230, 30, 30)
    return Image.fromarray(img)


def raw_forward(sam3, image, phrases):
    """Sam3Model end to end from Meta's pixels: no backend code between the image and the outputs."""
    ids = sam3.tokenizer([p.lower() for p in phrases], padding="max_length", max_length=32, return_tensors="pt")
    pixels = meta_pixels(image, sam3.size).expand(len(phrases), -1, -1, -1)
    with torch.no_grad():
        return sam3.model(pixel_values=pixels, input_ids=ids["input_ids"], attention_mask=ids["attention_mask"])


# ---- tests -------------------------------------------------------------------------------------------

def big_image() -> Image.Image:
    """Larger than SAM 3's input, so the resize shrinks it and antialiasing matters."""
    rng = np.random.default_rng(1)
    return Image.fromarray((rng.random((1200, 1500, 3)) * 255).astype(np.uint8))


def test_preprocessing_is_metas(sam3, image):
    for img in (image, big_image()):
        ours = sam3_pixels(img, 1008)
        ref = meta_pixels(img, 1008)
        assert ours.shape == (1, 3, 1008, 1008)
        assert (ours - ref).abs().max().item() == 0.0


@pytest.mark.parametrize("seed", [0, 1])
def test_phrase_instances_equal_metas_postprocessing(seed, image):
    """2 seeds x 2 images (one shrunk to 1008, one enlarged) x 4 phrases: the same instances, boxes and masks."""
    sam3 = build_tiny_sam3(seed=seed)
    for img in (image, big_image()):
        out = raw_forward(sam3, img, PHRASES)
        h, w = img.height, img.width
        emb = sam3.encode(img)
        for i, phrase in enumerate(PHRASES):
            scores = (out.pred_logits[i].sigmoid() * out.presence_logits[i].sigmoid()).sort().values
            threshold = float(scores[len(scores) // 2])  # about half the queries pass on random weights
            ours = sam3.segment_phrase(emb, phrase, threshold=threshold)
            queries, probs, boxes, masks = meta_grounding(out, i, h, w, threshold)
            assert len(ours) == len(queries) > 0
            order = np.argsort(ours.queries)  # ours are best first; Meta's in query order
            assert np.array_equal(ours.queries[order], queries.numpy())
            assert np.all(np.diff(ours.scores) <= 0)
            np.testing.assert_allclose(ours.scores[order], probs.numpy(), atol=1e-6)
            np.testing.assert_allclose(ours.boxes[order], boxes.numpy(), atol=1e-4)
            assert ours.masks.shape == (len(queries), h, w)
            # measured: 8 pixels of 101 M over this test (float order: our batch of 1 against a batch of 4)
            assert (ours.masks[order] != masks.numpy()).mean() <= 1e-6, "mask pixels differ from Meta's post-processing"


def test_k_phrases_cost_one_vision_pass(sam3, image):
    calls = []
    hook = sam3.model.vision_encoder.backbone.register_forward_hook(lambda *a: calls.append(1))
    try:
        emb = sam3.encode(image)
        together = sam3.segment_phrases(emb, PHRASES, threshold=0.0)
        apart = [sam3.segment_phrase(emb, p, threshold=0.0) for p in PHRASES]
    finally:
        hook.remove()
    assert len(calls) == 1
    for a, b in zip(together, apart):
        assert a.phrase == b.phrase and np.array_equal(a.queries, b.queries)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
        assert (a.masks != b.masks).sum() <= 2


def test_presence_rejects_a_phrase_as_a_whole(image):
    sam3 = build_tiny_sam3(seed=1)
    emb = sam3.encode(image)
    assert len(sam3.segment_phrase(emb, "red circle", threshold=1e-3)) > 0
    with torch.no_grad():  # SAM 3's presence head says "not in this image" for every phrase (clamped at -10)
        sam3.model.detr_decoder.presence_head.layer3.bias.fill_(-30.0)
    found = sam3.segment_phrases(emb, PHRASES, threshold=1e-3)
    assert all(len(f) == 0 and f.masks.shape == (0, 90, 130) and f.presence < 1e-4 for f in found)


def test_exemplar_boxes_reach_the_geometry_encoder(sam3, image):
    box = np.array([[30, 20, 80, 60]], np.float32)
    cxcywh = box_xyxy_to_cxcywh_normalized(box, (90, 130))
    np.testing.assert_allclose(cxcywh.numpy(), [[55 / 130, 40 / 90, 50 / 130, 40 / 90]], rtol=1e-6)
    emb = sam3.encode(image)
    try:
        import torchvision  # noqa: F401  (SAM 3's geometry encoder pools exemplars with its roi_align)
    except Exception:
        with pytest.raises(PromptError, match="torchvision"):
            sam3.segment_phrase(emb, "visual", exemplars=box)
        return
    plain = sam3.detector_outputs(emb, ["visual"])
    with_box = sam3.detector_outputs(emb, ["visual"], exemplars=box)
    assert not torch.allclose(plain.pred_logits, with_box.pred_logits)


def meta_tracker_features(tracker, pixels):
    """The tracker's image features in Meta's order (sam3_image.py): its own ViT and neck from the pixels, the
    levels the decoder uses, conv_s0 / conv_s1 on the two finest, "no memory" added to the coarsest used."""
    with torch.no_grad():
        maps = list(tracker.vision_encoder(pixels).fpn_hidden_states[:len(tracker.backbone_feature_sizes)])
        maps[0], maps[1] = tracker.mask_decoder.conv_s0(maps[0]), tracker.mask_decoder.conv_s1(maps[1])
        maps[-1] = maps[-1] + tracker.no_memory_embedding.view(1, -1, 1, 1)
    return maps


def test_boxes_and_points_go_through_the_tracker_in_metas_order(sam3, image):
    assert len(sam3.tracker.vision_encoder.neck.fpn_layers) == 4  # transformers' default: a fourth level to cut
    emb = sam3.encode(image)
    boxes = np.array([[30, 20, 80, 60], [5, 5, 120, 85]], np.float32)
    ours = sam3.predict(emb, boxes=boxes, multimask_output=True)
    again = sam3.predict(emb, points=np.array([[[50, 40]], [[60, 30]]]), multimask_output=False)
    assert emb.tracker is not None and again.masks.shape == (2, 1, 90, 130)
    sx, sy = sam3.size / 130, sam3.size / 90
    with torch.no_grad():
        out = sam3.tracker(image_embeddings=meta_tracker_features(sam3.tracker, meta_pixels(image, sam3.size)),
                           multimask_output=True, input_boxes=torch.tensor(boxes * [sx, sy, sx, sy])[None])
    want = F.interpolate(out.pred_masks[0], size=(90, 130), mode="bilinear", align_corners=False) > 0
    assert ours.masks.shape == want.shape == (2, 3, 90, 130)
    assert (ours.masks != want).sum().item() == 0  # measured: 0 pixels differ
    torch.testing.assert_close(ours.iou_scores, out.iou_scores[0], atol=1e-6, rtol=1e-5)


def test_a_detector_only_sam3_refuses_points_with_one_line(image):
    sam3 = build_tiny_sam3(seed=0, tracker=False)
    with pytest.raises(PromptError, match="no tracker"):
        sam3.predict(sam3.encode(image), boxes=[[0, 0, 10, 10]])
    with pytest.raises(PromptError, match="empty"):
        sam3.segment_phrases(sam3.encode(image), ["  "])


def test_saved_sam3_loads_by_config_and_shares_one_backbone(sam3, saved, image):
    loaded = load_sam_backend(saved)
    assert isinstance(loaded, Sam3Backend) and (saved / "tracker" / "config.json").is_file()
    assert loaded.tracker.vision_encoder.backbone is loaded.model.vision_encoder.backbone
    from safetensors.torch import load_file

    from vlmsam.sam.sam3_backend import SHARED_MARKER

    tracker_weights = load_file(str(saved / "tracker" / "model.safetensors"))
    assert (saved / "tracker" / SHARED_MARKER).is_file() and not any(k.startswith("vision_encoder.backbone.") for k in tracker_weights)
    a = sam3.segment_phrase(sam3.encode(image), "red circle", threshold=0.0)
    b = loaded.segment_phrase(loaded.encode(image), "red circle", threshold=0.0)
    assert np.array_equal(a.masks, b.masks) and np.allclose(a.scores, b.scores, atol=1e-6)
    box = [[30, 20, 80, 60]]
    assert torch.equal(sam3.predict(sam3.encode(image), boxes=box).masks, loaded.predict(loaded.encode(image), boxes=box).masks)


def test_grounded_runs_on_sam3_alone_and_round_trips(saved, image, tmp_path):
    seg = design("grounded")(BuildSpec(sam=str(saved)))
    assert seg.detector is None
    result = seg.segment(seg.encode(image), "red circle", score_threshold=0.0)
    assert len(result.masks) > 0 and set(result.labels) == {"red circle"}
    assert result.masks.shape[1:] == (90, 130) and np.all(np.diff(result.scores) <= 0)
    none = seg.segment(seg.encode(image), "red circle", score_threshold=1.0)
    assert len(none.masks) == 0 and "no instance" in none.info["reason"]
    seg.save_pretrained(tmp_path / "g")
    again = design("grounded")(BuildSpec(path=str(tmp_path / "g")))
    same = again.segment(again.encode(image), "red circle", score_threshold=0.0)
    assert np.array_equal(same.masks, result.masks)


def test_grounded_without_a_detector_needs_sam3(tmp_path):
    from tests.helpers.tiny_segmenters import save_tiny_sam2

    with pytest.raises(CheckpointError, match="not a SAM 3"):
        design("grounded")(BuildSpec(sam=str(save_tiny_sam2(tmp_path / "sam2"))))


def test_gsam_tags_go_to_sam3s_concept_head(saved, image, tmp_path):
    from tests.helpers.forcing import force_text
    from vlmsam.vlm.tiny import save_tiny_vlm

    seg = design("gsam")(BuildSpec(vlm=str(save_tiny_vlm(tmp_path / "vlm", "qwen2_5_vl")), sam=str(saved), max_new_tokens=8))
    encoded = seg.encode(image)
    answer = "Sure. <gsam>red circle</gsam> and <gsam>star</gsam>"
    result = seg.segment(encoded, "segment the red circle and the star", logits_processor=force_text(seg.vlm.processor, answer),
                         max_new_tokens=64, score_threshold=0.0)
    want = seg.sam.segment_phrases(seg.sam.encode(image), ["red circle", "star"], threshold=0.0)
    assert result.text == answer and result.info["phrases"] == ["red circle", "star"]
    assert result.labels == ["red circle"] * len(want[0]) + ["star"] * len(want[1])
    assert np.array_equal(result.masks, np.concatenate([w.masks for w in want]))


@pytest.mark.parametrize("request_text, phrase", [
    ("Could you segment all the red circles in this image?", "red circles"),
    ("Please draw a mask over the blue star shown here.", "blue star"),
    ("Where is the green square?", "green square"),
    ("Segment each star", "star"),
    ("red circle", "red circle"),
    ("all", "all"),  # nothing left after the wrapping: the request itself
])
def test_grounded_hands_sam3_the_noun_phrase(request_text, phrase):
    from vlmsam.gsam.segmenter import concept_phrase

    assert concept_phrase(request_text) == phrase


def test_box_prompt_and_the_predictor_run_on_sam3(sam3, image, tmp_path):
    from tests.helpers.forcing import force_text
    from tests.helpers.tiny_segmenters import box_prompt
    from vlmsam.sam import SamPredictor

    seg = box_prompt(tmp_path)
    seg.sam = sam3
    answer = '[{"bbox_2d": [10, 10, 40, 30], "label": "red"}]'
    result = seg.segment(seg.encode(image), "the red box", logits_processor=force_text(seg.vlm.processor, answer), max_new_tokens=64)
    assert result.num_masks == 1 and result.masks.shape[1:] == (90, 130)
    predictor = SamPredictor(sam3)
    emb = predictor.set_image(image)
    ours = predictor.predict(boxes=[[30, 20, 80, 60]])
    assert torch.equal(ours.masks, sam3.predict(emb, boxes=[[30, 20, 80, 60]]).masks)


def test_proposal_select_proposes_with_sam3s_tracker(sam3, image, tmp_path):
    from tests.helpers.tiny_segmenters import permissive_amg, proposal_select
    from vlmsam.sam.amg import AutomaticMaskGenerator

    proposals = AutomaticMaskGenerator(sam3, **vars(permissive_amg())).generate(image)
    assert proposals and all(p.mask().shape == (90, 130) for p in proposals)
    seg = proposal_select(tmp_path)
    seg.sam = sam3
    result = seg.segment(seg.encode(image), "the red box")
    assert result.masks.shape[1:] == (90, 130)
