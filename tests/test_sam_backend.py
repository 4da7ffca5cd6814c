"""The SAM backend against Meta's own predictor on a small random checkpoint, plus its API contract."""

import numpy as np
import pytest
import torch

from vlmsam.errors import CheckpointError, PromptError
from vlmsam.sam import SamBackend
from vlmsam.sam.checkpoints import load_sam_model


@pytest.fixture(scope="module")
def meta_predictor(tiny_meta):
    model, sa, _ = tiny_meta
    return sa.SamPredictor(model)


@pytest.fixture(scope="module")
def backend(tiny_meta):
    return SamBackend.from_pretrained(tiny_meta[2])


PROMPTS = {
    "box": dict(box=np.array([50, 40, 200, 160])),
    "points": dict(point_coords=np.array([[120, 100], [300, 200]]), point_labels=np.array([1, 0])),
    "box+point": dict(box=np.array([40, 30, 380, 280]), point_coords=np.array([[300, 200]]), point_labels=np.array([1])),
}


@pytest.mark.parametrize("kind", sorted(PROMPTS))
@pytest.mark.parametrize("multimask", [False, True])
def test_matches_meta_predictor(meta_predictor, backend, scene_image, kind, multimask):
    meta_predictor.set_image(scene_image)
    backend.set_image(scene_image)
    prompt = PROMPTS[kind]
    ref_masks, ref_iou, ref_low = meta_predictor.predict(**prompt, multimask_output=multimask, return_logits=True)
    ours = backend.predict(
        boxes=prompt["box"][None] if "box" in prompt else None,
        points=prompt["point_coords"][None] if "point_coords" in prompt else None,
        point_labels=prompt["point_labels"][None] if "point_labels" in prompt else None,
        multimask_output=multimask,
    )
    assert (meta_predictor.features - backend.embedding.embeddings).abs().max() < 1e-4
    assert np.abs(ref_low - ours.low_res_logits[0].numpy()).max() < 1e-4
    assert np.abs(ref_iou - ours.iou_scores[0].numpy()).max() < 1e-4
    assert ours.masks.shape == (1, 3 if multimask else 1, 300, 420) and ours.masks.dtype == torch.bool
    assert ((ref_masks > 0) == ours.masks[0].numpy()).mean() >= 0.9999


def test_mask_input_refinement_matches_meta(meta_predictor, backend, scene_image):
    meta_predictor.set_image(scene_image)
    backend.set_image(scene_image)
    first = backend.predict(boxes=[[50, 40, 200, 160]])
    low = first.low_res_logits[:, 0]  # (1, 256, 256)
    ref, _, ref_low = meta_predictor.predict(box=np.array([50, 40, 200, 160]), mask_input=low.numpy(), multimask_output=False, return_logits=True)
    ours = backend.predict(boxes=[[50, 40, 200, 160]], mask_input=low)
    assert np.abs(ref_low - ours.low_res_logits[0].numpy()).max() < 1e-4


def test_image_is_encoded_once(tiny_meta, scene_image):
    sam = SamBackend.from_pretrained(tiny_meta[2])
    with pytest.raises(RuntimeError, match="set_image"):
        sam.predict(boxes=[[0, 0, 10, 10]])
    sam.set_image(scene_image)
    for box in ([0, 0, 100, 100], [50, 50, 300, 200], [10, 20, 30, 40]):
        sam.predict(boxes=[box])
    sam.set_image(scene_image.copy())  # same pixels: the cached embedding is kept
    assert sam.encoder_calls == 1
    sam.set_image(scene_image[::-1].copy())
    assert sam.encoder_calls == 2


def test_batched_boxes_equal_one_by_one(backend, scene_image):
    backend.set_image(scene_image)
    boxes = [[50, 40, 200, 160], [240, 140, 360, 260], [0, 0, 420, 300]]
    batched = backend.predict(boxes=boxes)
    assert batched.masks.shape == (3, 1, 300, 420)
    for i, box in enumerate(boxes):
        single = backend.predict(boxes=[box])
        torch.testing.assert_close(batched.low_res_logits[i], single.low_res_logits[0], atol=1e-5, rtol=0)


def test_sparse_embedding_path_has_gradients(backend, scene_image):
    """The [SEG] path: projected hidden states as sparse prompts, gradients to prompts and decoder."""
    emb = backend.set_image(scene_image)
    sparse = torch.randn(2, 1, 256, requires_grad=True)
    low, iou = backend.decode(emb, sparse_embeddings=sparse)
    assert low.shape == (2, 1, 256, 256) and iou.shape == (2, 1)
    logits = backend.upscale_logits(low, emb)
    assert logits.shape == (2, 1, 300, 420)
    logits.sigmoid().mean().backward()
    assert sparse.grad is not None and sparse.grad.abs().sum() > 0
    assert backend.model.mask_decoder.iou_token.weight.grad is not None
    backend.model.zero_grad(set_to_none=True)


def test_box_clipping_and_bad_prompts(backend, scene_image):
    backend.set_image(scene_image)
    clipped = backend.predict(boxes=[[-50, -20, 200, 400]])
    inside = backend.predict(boxes=[[0, 0, 200, 300]])
    torch.testing.assert_close(clipped.low_res_logits, inside.low_res_logits)
    with pytest.raises(PromptError, match="x1 <= x2"):
        backend.predict(boxes=[[200, 10, 100, 50]])
    with pytest.raises(PromptError, match="outside the 420x300 image"):
        backend.predict(boxes=[[500, 10, 600, 50]])
    with pytest.raises(PromptError, match="outside"):
        backend.predict(points=[[[10, 999]]])
    with pytest.raises(PromptError, match="labels"):
        backend.predict(points=[[[10, 10]]], point_labels=[[3]])
    with pytest.raises(PromptError, match="same number"):
        backend.predict(boxes=[[0, 0, 10, 10], [0, 0, 20, 20]], points=[[[5, 5]]])


def test_segment_returns_result_type(backend, scene_image):
    result = backend.segment(scene_image, boxes=[[50, 40, 200, 160], [240, 140, 360, 260]])
    assert result.masks.shape == (2, 300, 420) and result.masks.dtype == bool
    assert result.boxes.tolist() == [[50, 40, 200, 160], [240, 140, 360, 260]]
    assert set(result.timings) == {"encode_image", "decode_masks"}


def test_transformers_directory_round_trip(tiny_sam_dir, backend, scene_image):
    reloaded = SamBackend.from_pretrained(tiny_sam_dir)
    a = backend.segment(scene_image, boxes=[[50, 40, 200, 160]])
    b = reloaded.segment(scene_image, boxes=[[50, 40, 200, 160]])
    assert np.array_equal(a.masks, b.masks)
    from transformers import SamModel

    plain = SamModel.from_pretrained(tiny_sam_dir)  # the directory is an ordinary transformers model
    assert plain.config.vision_config.hidden_size == 32


def test_wrong_checkpoints_are_refused(tmp_path, tiny_meta, tiny_sam_dir):
    _, _, pth = tiny_meta
    state = torch.load(pth, weights_only=True)

    missing = {k: v for k, v in state.items() if not k.startswith("mask_decoder.output_hypernetworks_mlps.3.")}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing 6 keys \(mask_decoder.output_hypernetworks_mlps.3.proj_in"):
        load_sam_model(tmp_path / "missing.pth")

    extra = dict(state, **{"mask_decoder.extra_head.weight": torch.zeros(3)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"unexpected 1 keys \(mask_decoder.extra_head.weight\)"):
        load_sam_model(tmp_path / "extra.pth")

    torch.save({"conv.weight": torch.zeros(2, 2)}, tmp_path / "resnet.pth")
    with pytest.raises(CheckpointError, match="not a Segment Anything checkpoint"):
        load_sam_model(tmp_path / "resnet.pth")

    (tmp_path / "garbage.pth").write_bytes(b"\x00not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_sam_model(tmp_path / "garbage.pth")

    with pytest.raises(CheckpointError, match="no such file"):
        load_sam_model(tmp_path / "sam_vit_h_4b8939.pth")

    from transformers import BertConfig

    BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8).save_pretrained(tmp_path / "bert")
    with pytest.raises(CheckpointError, match="is a 'bert' checkpoint, not a Segment Anything"):
        load_sam_model(tmp_path / "bert")

    with pytest.raises(CheckpointError, match="pass the directory"):
        load_sam_model(tiny_sam_dir / "config.json")


class Payload:
    """Anything a pickle can rebuild by calling code; weights_only=True must refuse it."""

    def __reduce__(self):
        return (print, ("code ran while loading a checkpoint",))


def test_pickled_code_is_refused(tmp_path, capsys):
    torch.save({"image_encoder.pos_embed": torch.zeros(1), "x": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="refused to load"):
        load_sam_model(tmp_path / "evil.pth")
    assert "code ran" not in capsys.readouterr().out
