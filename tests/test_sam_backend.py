"""The SAM backend against Meta's own predictor on a small random checkpoint, plus its API contract:
a stateless backend (encode, then predict with the embedding) and the SamPredictor over it."""

import numpy as np
import pytest
import torch

from vlmsam.errors import CheckpointError, PromptError
from vlmsam.sam import ImageEmbedding, SamBackend, SamPredictor
from vlmsam.sam.checkpoints import load_sam_model


@pytest.fixture(scope="module")
def meta_predictor(tiny_meta):
    model, sa, _ = tiny_meta
    return sa.SamPredictor(model)


@pytest.fixture(scope="module")
def backend(tiny_meta):
    return SamBackend.from_pretrained(tiny_meta[2])


@pytest.fixture(scope="module")
def emb(backend, scene_image):
    return backend.encode(scene_image)


PROMPTS = {
    "box": dict(box=np.array([50, 40, 200, 160])),
    "points": dict(point_coords=np.array([[120, 100], [300, 200]]), point_labels=np.array([1, 0])),
    "box+point": dict(box=np.array([40, 30, 380, 280]), point_coords=np.array([[300, 200]]), point_labels=np.array([1])),
}


@pytest.mark.parametrize("kind", sorted(PROMPTS))
@pytest.mark.parametrize("multimask", [False, True])
def test_matches_meta_predictor(meta_predictor, backend, emb, scene_image, kind, multimask):
    meta_predictor.set_image(scene_image)
    prompt = PROMPTS[kind]
    ref_masks, ref_iou, ref_low = meta_predictor.predict(**prompt, multimask_output=multimask, return_logits=True)
    ours = backend.predict(
        emb,
        boxes=prompt["box"][None] if "box" in prompt else None,
        points=prompt["point_coords"][None] if "point_coords" in prompt else None,
        point_labels=prompt["point_labels"][None] if "point_labels" in prompt else None,
        multimask_output=multimask,
    )
    assert (meta_predictor.features - emb.embeddings).abs().max() < 1e-4
    assert np.abs(ref_low - ours.low_res_logits[0].numpy()).max() < 1e-4
    assert np.abs(ref_iou - ours.iou_scores[0].numpy()).max() < 1e-4
    assert ours.masks.shape == (1, 3 if multimask else 1, 300, 420) and ours.masks.dtype == torch.bool
    assert ((ref_masks > 0) == ours.masks[0].numpy()).mean() >= 0.9999


def test_mask_input_refinement_matches_meta(meta_predictor, backend, emb, scene_image):
    meta_predictor.set_image(scene_image)
    first = backend.predict(emb, boxes=[[50, 40, 200, 160]])
    low = first.low_res_logits[:, 0]  # (1, 256, 256)
    ref, _, ref_low = meta_predictor.predict(box=np.array([50, 40, 200, 160]), mask_input=low.numpy(), multimask_output=False, return_logits=True)
    ours = backend.predict(emb, boxes=[[50, 40, 200, 160]], mask_input=low)
    assert np.abs(ref_low - ours.low_res_logits[0].numpy()).max() < 1e-4


def test_backend_needs_an_embedding(backend):
    """Nothing falls back to a stored image: without an ImageEmbedding every call is one line."""
    calls = {
        "predict None": lambda: backend.predict(None, boxes=[[0, 0, 10, 10]]),
        "predict a path": lambda: backend.predict("scene.png", boxes=[[0, 0, 10, 10]]),
        "decode": lambda: backend.decode(None, sparse_embeddings=torch.zeros(1, 1, 256)),
        "decode_prompts": lambda: backend.decode_prompts(None, torch.zeros(1, 1, 256)),
        "encode_prompts": lambda: backend.encode_prompts(None, boxes=[[0, 0, 10, 10]]),
        "upscale_logits": lambda: backend.upscale_logits(torch.zeros(1, 1, 256, 256), None),
    }
    for name, call in calls.items():
        with pytest.raises(PromptError, match=r"call encode\(image\) first") as info:
            call()
        assert "\n" not in str(info.value), name
    with pytest.raises(TypeError):  # the embedding is a required argument, not an optional one
        backend.predict(boxes=[[0, 0, 10, 10]])


def test_backend_holds_no_image(backend, emb, scene_image):
    """Two images' embeddings used interleaved give exactly what each gives alone."""
    for gone in ("set_image", "reset_image", "embedding", "segment", "_embedding"):
        assert not hasattr(backend, gone), gone
    other = backend.encode(scene_image[::-1, ::-1].copy())
    prompts = [dict(boxes=[[50, 40, 200, 160]]), dict(points=[[[120, 100], [300, 200]]], point_labels=[[1, 0]]),
               dict(boxes=[[0, 0, 420, 300]], multimask_output=True)]
    alone = [backend.predict(e, **p) for e in (emb, other) for p in prompts]
    mixed = {}
    for i, p in enumerate(prompts):
        mixed[i] = backend.predict(emb, **p)
        mixed[len(prompts) + i] = backend.predict(other, **p)
    for i, ref in enumerate(alone):
        assert torch.equal(mixed[i].masks, ref.masks) and torch.equal(mixed[i].iou_scores, ref.iou_scores), i
        assert torch.equal(mixed[i].low_res_logits, ref.low_res_logits), i
    assert not torch.equal(alone[0].low_res_logits, alone[len(prompts)].low_res_logits)  # the images differ
    assert not any(isinstance(v, ImageEmbedding) for v in vars(backend).values())


def test_predictor_equals_backend_and_encodes_once(backend, emb, scene_image, monkeypatch):
    encodes = []
    encode = backend.encode

    def counting_encode(image):  # wraps the collaborator, not the predictor under test
        encodes.append(image)
        return encode(image)

    monkeypatch.setattr(backend, "encode", counting_encode)
    predictor = SamPredictor(backend)
    with pytest.raises(PromptError, match=r"call set_image\(image\) before predict"):
        predictor.predict(boxes=[[50, 40, 200, 160]])
    first = predictor.set_image(scene_image)
    for prompt in (dict(boxes=[[50, 40, 200, 160], [240, 140, 360, 260]]),
                   dict(points=[[[120, 100], [300, 200]]], point_labels=[[1, 0]], multimask_output=True),
                   dict(boxes=[[40, 30, 380, 280]], points=[[[300, 200]]])):
        ours, ref = predictor.predict(**prompt), backend.predict(emb, **prompt)
        assert torch.equal(ours.masks, ref.masks) and torch.equal(ours.iou_scores, ref.iou_scores)
        assert torch.equal(ours.low_res_logits, ref.low_res_logits)
    assert predictor.set_image(scene_image.copy()) is first and len(encodes) == 1  # same pixels: kept
    predictor.set_image(scene_image[::-1].copy())
    assert len(encodes) == 2 and predictor.embedding is not first
    predictor.reset_image()
    assert not predictor.is_image_set
    with pytest.raises(PromptError, match="set_image"):
        predictor.predict(boxes=[[50, 40, 200, 160]])


def test_batched_boxes_equal_one_by_one(backend, emb):
    boxes = [[50, 40, 200, 160], [240, 140, 360, 260], [0, 0, 420, 300]]
    batched = backend.predict(emb, boxes=boxes)
    assert batched.masks.shape == (3, 1, 300, 420)
    for i, box in enumerate(boxes):
        single = backend.predict(emb, boxes=[box])
        torch.testing.assert_close(batched.low_res_logits[i], single.low_res_logits[0], atol=1e-5, rtol=0)


def test_sparse_embedding_path_has_gradients(backend, emb):
    """The [SEG] path: projected hidden states as sparse prompts, gradients to prompts and decoder."""
    sparse = torch.randn(2, 1, 256, requires_grad=True)
    low, iou = backend.decode(emb, sparse_embeddings=sparse)
    assert low.shape == (2, 1, 256, 256) and iou.shape == (2, 1)
    logits = backend.upscale_logits(low, emb)
    assert logits.shape == (2, 1, 300, 420)
    logits.sigmoid().mean().backward()
    assert sparse.grad is not None and sparse.grad.abs().sum() > 0
    assert backend.model.mask_decoder.iou_token.weight.grad is not None
    backend.model.zero_grad(set_to_none=True)


def test_box_clipping_and_bad_prompts(backend, emb):
    clipped = backend.predict(emb, boxes=[[-50, -20, 200, 400]])
    inside = backend.predict(emb, boxes=[[0, 0, 200, 300]])
    torch.testing.assert_close(clipped.low_res_logits, inside.low_res_logits)
    with pytest.raises(PromptError, match="x1 <= x2"):
        backend.predict(emb, boxes=[[200, 10, 100, 50]])
    with pytest.raises(PromptError, match="outside the 420x300 image"):
        backend.predict(emb, boxes=[[500, 10, 600, 50]])
    with pytest.raises(PromptError, match="outside"):
        backend.predict(emb, points=[[[10, 999]]])
    with pytest.raises(PromptError, match="labels"):
        backend.predict(emb, points=[[[10, 10]]], point_labels=[[3]])
    with pytest.raises(PromptError, match="same number"):
        backend.predict(emb, boxes=[[0, 0, 10, 10], [0, 0, 20, 20]], points=[[[5, 5]]])


def test_predictor_call_returns_result_type(backend, scene_image):
    result = SamPredictor(backend)(scene_image, boxes=[[50, 40, 200, 160], [240, 140, 460, 260]])
    assert result.masks.shape == (2, 300, 420) and result.masks.dtype == bool
    assert result.boxes.tolist() == [[50, 40, 200, 160], [240, 140, 420, 260]]  # clipped to the image
    assert set(result.timings) == {"encode_image", "decode_masks"}
    best = SamPredictor(backend)(scene_image, points=[[[120, 100]]], multimask_output=True)
    assert best.masks.shape == (1, 300, 420) and best.scores.shape == (1,)


def test_transformers_directory_round_trip(tiny_sam_dir, backend, scene_image):
    reloaded = SamPredictor.from_pretrained(tiny_sam_dir)
    a = SamPredictor(backend)(scene_image, boxes=[[50, 40, 200, 160]])
    b = reloaded(scene_image, boxes=[[50, 40, 200, 160]])
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
