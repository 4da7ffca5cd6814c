"""Meta's one-to-many (DAC) branch of SAM 3's training: its matcher against Meta's own code, and the query copies
that skip self-attention, on a tiny real Sam3Model."""

from __future__ import annotations

import random

import pytest
import torch

from tests.reference.sam3_o2m_matcher import binary_one_to_many_match
from vlmsam.sam.sam3_losses import Sam3LossWeights, match_one_to_many, one_to_many_losses, xyxy_to_cxcywh

pytestmark = pytest.mark.usefixtures("one_thread")


def _boxes(g, n):
    xy = torch.rand(n, 2, generator=g) * 0.6
    return torch.cat([xy, xy + 0.1 + torch.rand(n, 2, generator=g) * 0.3], dim=1)


@pytest.mark.parametrize("seed", range(6))
def test_one_to_many_matching_equals_metas(seed):
    g = torch.Generator().manual_seed(seed)
    queries, targets = 16, 1 + seed % 4
    truth = _boxes(g, targets)
    # predictions scattered around the targets, so that some pass the threshold and some do not
    boxes = truth[torch.randint(targets, (queries,), generator=g)] + torch.randn(queries, 4, generator=g) * 0.05
    logits = torch.randn(queries, generator=g) * 3
    q, t = match_one_to_many(logits, boxes, truth, Sam3LossWeights())
    _, mq, mt = binary_one_to_many_match(
        {"pred_logits": logits[None, :, None], "pred_boxes": xyxy_to_cxcywh(boxes)[None]},
        {"num_boxes": torch.tensor([targets]), "boxes_padded": xyxy_to_cxcywh(truth)[None]})
    assert len(mq) > 0 or seed > 3  # the scatter above makes matches in most draws
    assert sorted(zip(q.tolist(), t.tolist())) == sorted(zip(mq.tolist(), mt.tolist()))
    assert all((t == k).sum() <= 4 for k in range(targets))  # at most top-k queries per instance


def test_one_to_many_losses_reward_every_query_on_an_instance():
    truth = torch.tensor([[0.1, 0.1, 0.4, 0.5], [0.5, 0.5, 0.9, 0.8]])
    targets = [{"boxes": truth, "masks": torch.zeros(2, 8, 8)}]
    good_boxes = truth.repeat(4, 1)[None, None]  # (L=1, B=1, 8, 4): four copies of each instance
    bad_boxes = torch.tensor([0.0, 0.9, 0.05, 0.95]).expand(1, 1, 8, 4)
    logits = torch.full((1, 1, 8), 3.0)
    good, bad = one_to_many_losses(logits, good_boxes, targets), one_to_many_losses(logits, bad_boxes, targets)
    assert good["giou_loss_o2m"] < 1e-5 and bad["giou_loss_o2m"] == 0  # no query near an instance: nothing matched
    assert good["class_loss_o2m"] < bad["class_loss_o2m"]  # ... so every confident query is taught "no"
    q, _ = match_one_to_many(logits[0, 0], good_boxes[0, 0], truth, Sam3LossWeights())
    assert len(q) == 8  # every copy on an instance is a positive (Hungarian would take 2) ...
    two = one_to_many_losses(logits.expand(2, 1, 8), good_boxes.expand(2, 1, 8, 4), targets)
    assert two["class_loss_o2m"] > good["class_loss_o2m"] + 0.01  # ... but an earlier layer is matched one-to-one


def test_query_copies_skip_self_attention_and_train(tmp_path):
    """DAC's o2m queries: query i's outputs do not depend on query j (no self-attention), while the one-to-one
    queries' do; a training step with dac adds the o2m losses and sends gradients through the decoder."""
    from vlmsam.data.synth import write_synth
    from vlmsam.data.synth_dataset import SynthDataset
    from vlmsam.gsam.training import Sam3TrainingModel
    from vlmsam.gsam.training_config import Sam3TrainConfig

    config = Sam3TrainConfig(sam="tiny", dac=True, tiny_image_size=56, tiny_hidden=32, tiny_vit_layers=1,
                             tiny_decoder_layers=2, phrases_per_image=3, negative_rate=0.0)
    model = Sam3TrainingModel.build(config)
    write_synth(tmp_path, 4, seed=1, splits={"train": 1.0}, progress=False)
    ds = SynthDataset(tmp_path, "train")
    batch = model.collator([model.collator.prepare(ds.load(k, random.Random(k))) for k in range(2)])

    def run():
        seen, hidden = {}, []
        decoder = model.sam3.detr_decoder
        hooks = [decoder.register_forward_pre_hook(lambda m, a, kw: seen.update(kw), with_kwargs=True),
                 decoder.register_forward_hook(lambda m, a, o: hidden.append(o.intermediate_hidden_states[-1]))]
        with torch.no_grad():
            model.sam3(pixel_values=batch.pixels[batch.image_of], input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        for h in hooks:
            h.remove()
        with torch.no_grad():
            return hidden[0], model.one_to_many_queries(seen)[:2]

    o2o, (logits, boxes) = run()
    assert logits.shape[:1] == boxes.shape[:1] == (2,)  # every decoder layer
    with torch.no_grad():
        model.sam3.detr_decoder.query_embed.weight[0] += 3.0
        model.sam3.detr_decoder.reference_points.weight[0] += 1.0
    o2o_after, (logits_after, boxes_after) = run()
    others = slice(1, None)
    moved = (o2o_after[:, others] - o2o[:, others]).abs().max()
    assert moved > 1e-3  # self-attention mixes the one-to-one queries ...
    assert torch.equal(logits_after[..., others], logits[..., others])  # ... not their copies
    assert torch.equal(boxes_after[..., others, :], boxes[..., others, :])
    assert not torch.allclose(boxes_after[..., 0, :], boxes[..., 0, :], atol=1e-5)

    named = model(batch).losses()
    assert {"class_loss_o2m", "bbox_loss_o2m", "giou_loss_o2m", "mask_loss_o2m", "dice_loss_o2m"} <= set(named)
    o2m = sum(v for k, v in named.items() if k.endswith("_o2m"))
    assert o2m > 0 and named["loss"].requires_grad


def test_query_copies_equal_the_model_without_self_attention():
    """With every self-attention's output projection zeroed, Sam3Model's own logits, boxes and masks are the copies'."""
    from vlmsam.gsam.training import Sam3TrainingModel
    from vlmsam.gsam.training_config import Sam3TrainConfig

    model = Sam3TrainingModel.build(Sam3TrainConfig(sam="tiny", dac=True, tiny_image_size=56, tiny_hidden=32,
                                                    tiny_vit_layers=1, tiny_decoder_layers=2))
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(2, 3, 56, 56, generator=g)
    ids = model.backend.tokenizer(["red circle", "stars"], padding="max_length", max_length=32, return_tensors="pt")
    seen = {}
    hooks = [getattr(model.sam3, n).register_forward_pre_hook(lambda m, a, kw, n=n: seen.__setitem__(n, kw), with_kwargs=True)
             for n in ("detr_decoder", "mask_decoder")]
    with torch.no_grad():
        model.sam3(pixel_values=pixels, input_ids=ids["input_ids"], attention_mask=ids["attention_mask"])
        logits, boxes, masks = model.one_to_many_queries(seen["detr_decoder"], seen["mask_decoder"])
        for layer in model.sam3.detr_decoder.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.self_attn.o_proj.bias.zero_()
        plain = model.sam3(pixel_values=pixels, input_ids=ids["input_ids"], attention_mask=ids["attention_mask"])
    for h in hooks:
        h.remove()
    torch.testing.assert_close(logits[-1], plain.pred_logits)
    torch.testing.assert_close(boxes[-1], plain.pred_boxes)
    torch.testing.assert_close(masks, plain.pred_masks)


def test_only_the_one_to_many_loss_reaches_the_decoder_through_the_copies():
    """The DAC loss alone sends gradients into the decoder's cross-attention and the mask head (not self-attention)."""
    from vlmsam.gsam.training import Sam3TrainingModel
    from vlmsam.gsam.training_config import Sam3TrainConfig
    from vlmsam.sam.sam3_losses import masks_to_boxes

    model = Sam3TrainingModel.build(Sam3TrainConfig(sam="tiny", dac=True, tiny_image_size=56, tiny_hidden=32,
                                                    tiny_vit_layers=1, tiny_decoder_layers=2))
    pixels = torch.randn(1, 3, 56, 56, generator=torch.Generator().manual_seed(1))
    ids = model.backend.tokenizer(["circle"], padding="max_length", max_length=32, return_tensors="pt")
    seen = {}
    hooks = [getattr(model.sam3, n).register_forward_pre_hook(lambda m, a, kw, n=n: seen.__setitem__(n, kw), with_kwargs=True)
             for n in ("detr_decoder", "mask_decoder")]
    model.sam3(pixel_values=pixels, input_ids=ids["input_ids"], attention_mask=ids["attention_mask"])
    for h in hooks:
        h.remove()
    logits, boxes, masks = model.one_to_many_queries(seen["detr_decoder"], seen["mask_decoder"])
    size = masks.shape[-1]
    x0, y0, x1, y1 = (boxes[-1, 0, 0].detach().clamp(0, 1) * size).round().int().tolist()  # an instance where a query is
    m = torch.zeros(1, size, size, dtype=torch.bool)
    m[0, y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)] = True
    loss = one_to_many_losses(logits, boxes, [{"boxes": masks_to_boxes(m), "masks": m.float()}], masks=masks)
    assert loss["mask_loss_o2m"] > 0  # the copies matched it
    loss["loss"].backward()
    layer = model.sam3.detr_decoder.layers[0]
    assert layer.vision_cross_attn.q_proj.weight.grad.abs().sum() > 0
    assert layer.self_attn.q_proj.weight.grad is None or layer.self_attn.q_proj.weight.grad.abs().sum() == 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.sam3.mask_decoder.parameters())
