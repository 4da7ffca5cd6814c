"""The [SEG]-token model's training targets on tiny random Qwen-VL + SAM models: prompt targets, number tokens,
answer weighting and the grounding loss."""

import numpy as np
import pytest
import torch

from tests.helpers.seg_token_bases import bases, image, make_model, target  # noqa: F401 (fixtures)
from vlmsam.data import Sample
from vlmsam.seg_token.losses import answer_weighted_ce


@pytest.mark.parametrize("kind", ["region", "point"])
def test_prompt_target_loss_is_in_the_loss_and_reaches_the_projection(bases, image, kind):
    model = make_model(bases, prompt_target_weight=1.0, prompt_target=kind)
    sample = Sample(image, [[("Can you segment the red square?", "Sure, [SEG].")]], target()[None], name="s0")
    out = model([sample])
    c = model.config
    assert out.target_loss is not None and out.target_loss > 0
    torch.testing.assert_close(out.loss.detach(), c.ce_weight * out.ce_loss + c.bce_weight * out.bce_loss
                               + c.dice_weight * out.dice_loss + out.target_loss, rtol=1e-5, atol=1e-6)
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.projection.parameters())
    assert make_model(bases)([sample]).target_loss is None  # off by default, as in LISA


def test_point_target_is_sams_own_point_embedding(bases, image):
    model = make_model(bases, prompt_target_weight=1.0, prompt_target="point")
    embedding = model.sam_backend.encode(image)
    # rows 10-29, columns 20-49: centre (34.5, 19.5); the first nearest pixel is x=34, y=19
    sparse, _ = model.sam_backend.encode_prompts(embedding, points=[[[34, 19]]])
    got = model.point_embeddings(torch.from_numpy(target()[None]), embedding)
    torch.testing.assert_close(got, sparse[:, 0])  # the point itself (the padding point follows it)


def test_unknown_prompt_target_fails_when_the_model_is_built(bases):
    with pytest.raises(ValueError, match="prompt_target"):
        make_model(bases, prompt_target="pixel")


def test_region_target_averages_sams_embedding_over_the_target(bases, image):
    model = make_model(bases, prompt_target_weight=1.0, prompt_target="region")
    embedding = model.sam_backend.encode(image)  # 60 x 80 -> 48 x 64 in a 64-pixel frame: 6 x 8 of 8 x 8 cells
    feats = embedding.embeddings[0]
    whole = model.region_embeddings(torch.ones(1, 60, 80, dtype=torch.uint8), embedding)
    torch.testing.assert_close(whole[0], feats[:, :6, :].mean((1, 2)))  # the padding rows are left out
    # the box (rows 10-29, columns 20-49) covers cells rows 1-2 x columns 2-4 in SAM's frame
    box = model.region_embeddings(torch.from_numpy(target()[None]), embedding)[0]
    inside = feats[:, 1:3, 2:5].mean((1, 2))
    assert (box - inside).norm() < 0.25 * (whole[0] - inside).norm()
    states = torch.randn(2, model.projection[0].in_features)
    targets = torch.from_numpy(np.stack([target(), np.ones((60, 80), np.uint8)]))
    expected = ((model.projection(states) - torch.stack([box, whole[0]])) ** 2).mean(-1).sum()
    torch.testing.assert_close(model.prompt_target_loss(states, targets, embedding), expected)


def test_number_tokens_are_taught_as_ordinal_values():
    """number_sigma: a number target's loss is the CE against a Gaussian over the number tokens around it,
    so a guess near the target costs less than one far away; other tokens keep the one-hot CE."""
    torch.manual_seed(0)
    vocab = 12
    ids, values = torch.tensor([2, 3, 4, 5, 6, 7]), torch.tensor([10, 11, 12, 13, 14, 15])
    labels = torch.tensor([[-100, 1, 4, 9]])  # 4 is the number 12, after token 1 (an opener: "[")
    by_hand = []
    for guess in (4, 7):  # logits that favour 12 (right) or 15 (3 away)
        logits = torch.zeros(1, 4, vocab)
        logits[0, 1, guess] = 5.0
        soft = torch.softmax(-((values.float() - 12) ** 2) / (2 * 2.0 ** 2), -1)
        number_loss = -(soft * torch.log_softmax(logits[0, 1], -1)[ids]).sum()
        plain = torch.nn.functional.cross_entropy(logits[0, [0, 2]], torch.tensor([1, 9]), reduction="none")
        expected = (plain.sum() + number_loss) / 3
        got = answer_weighted_ce(logits, labels, 1.0, (ids, values), 2.0)
        torch.testing.assert_close(got, expected)
        torch.testing.assert_close(answer_weighted_ce(logits, labels, 1.0, (ids, values), 2.0, torch.tensor([1])), expected)
        # not after an opener ("bbox_2d"'s 2): the plain CE
        torch.testing.assert_close(answer_weighted_ce(logits, labels, 1.0, (ids, values), 2.0, torch.tensor([8])),
                                   answer_weighted_ce(logits, labels, 1.0))
        by_hand.append(float(got))
        torch.testing.assert_close(answer_weighted_ce(logits, labels, 1.0, (ids, values), 0.0), answer_weighted_ce(logits, labels, 1.0))
    assert by_hand[0] < by_hand[1]


def test_answer_weighted_ce_weights_each_answers_first_token():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 7, 11, generator=g)
    labels = torch.tensor([[-100, -100, 3, 4, -100, 5, 6], [-100, 2, 9, -100, -100, -100, -100]])
    # by hand: position j predicts labels[j + 1]; answers start at labels 3, 5 (row 0) and 2 (row 1)
    terms = []
    for r, j, w in [(0, 1, 4.0), (0, 2, 1.0), (0, 4, 4.0), (0, 5, 1.0), (1, 0, 4.0), (1, 1, 1.0)]:
        terms.append((w, -logits[r, j].log_softmax(-1)[labels[r, j + 1]]))
    expected = sum(w * t for w, t in terms) / sum(w for w, _ in terms)
    torch.testing.assert_close(answer_weighted_ce(logits, labels, 4.0), expected)
    plain = sum(t for _, t in terms) / len(terms)
    torch.testing.assert_close(answer_weighted_ce(logits, labels, 1.0), plain)


def test_answer_start_weight_changes_only_the_ce_term(bases, image):
    sample = Sample(image, [[("Can you segment the red square?", "Sure, [SEG].")], [("Describe it.", "There is a red square.")]],
                    target()[None], name="s0")
    plain = make_model(bases, use_lora=False).eval()
    weighted = make_model(bases, use_lora=False, answer_start_weight=5.0).eval()
    batch = plain.collator([sample])
    with torch.no_grad():
        a, b = plain(batch), weighted(batch)
        lm = plain.vlm(**plain.vlm_inputs(batch.input_ids), attention_mask=batch.attention_mask,
                       mm_encoder_outputs={"image": plain.vision_features(batch)},
                       image_grid_thw=batch.image_grid_thw[batch.row_image], labels=batch.labels)
    torch.testing.assert_close(a.ce_loss, lm.loss)  # weight 1: transformers' own loss
    torch.testing.assert_close(answer_weighted_ce(lm.logits, batch.labels, 1.0), lm.loss)
    torch.testing.assert_close(b.ce_loss, answer_weighted_ce(lm.logits, batch.labels, 5.0))
    assert not torch.isclose(a.ce_loss, b.ce_loss)
    torch.testing.assert_close(b.bce_loss, a.bce_loss)
    c = weighted.config
    torch.testing.assert_close(b.loss, c.ce_weight * b.ce_loss + c.bce_weight * b.bce_loss + c.dice_weight * b.dice_loss)


def cell_shares(mask, gh, gw):
    """Each cell's share of ``mask`` on a gh x gw grid (adaptive pooling's cell bounds), row-major."""
    h, w = mask.shape
    out = []
    for i in range(gh):
        for j in range(gw):
            cell = mask[i * h // gh: -(-(i + 1) * h // gh), j * w // gw: -(-(j + 1) * w // gw)]
            out.append(cell.mean())
    return np.array(out)


def test_grounding_queries_are_each_seg_and_each_answers_decision_token(bases, image):
    model = make_model(bases, use_lora=False, grounding_weight=1.0)
    a, b = target(box=(0, 30, 0, 40)), target(box=(30, 60, 40, 80))
    sample = Sample(image, [[("Segment both squares.", "Sure, [SEG] and [SEG].")], [("Describe it.", "Two squares.")]],
                    np.stack([a, b]), name="s0")
    batch = model.collator([sample])
    _, gh, gw = (batch.image_grid_thw[0] // 2).tolist()
    queries = model.grounding_queries(batch)
    segs = torch.nonzero(batch.input_ids[0] == model.config.seg_token_id)[:, 0].tolist()
    assert [(r, q) for r, q, *_ in queries][1:] == [(0, segs[0]), (0, segs[1])]  # nothing from the caption row
    r, decision, _, union = queries[0]
    assert batch.labels[0, decision] == -100 and batch.labels[0, decision + 1] != -100
    visual = torch.nonzero(batch.input_ids[0] == model._base_vlm().config.image_token_id)[:, 0]
    for (_, _, keys, wanted), mask in zip(queries, [np.maximum(a, b), a, b]):
        assert torch.equal(keys, visual)
        expected = cell_shares(mask.astype(np.float64), gh, gw)
        np.testing.assert_allclose(wanted.numpy(), expected / expected.sum(), atol=1e-6)


def test_grounding_loss_teaches_the_first_head_to_look_at_the_target(bases, image):
    sample = Sample(image, [[("Can you segment the red square?", "Sure, [SEG].")]], target()[None], name="s0")
    plain = make_model(bases, use_lora=False).train()
    model = make_model(bases, use_lora=False, train_language_model=True, grounding_weight=1.0,
                       ce_weight=0.0, bce_weight=0.0, dice_weight=0.0).train()
    batch = model.collator([sample])
    text_config = model._base_vlm().config.text_config
    assert text_config._attn_implementation == "sdpa"  # untouched until it trains
    out, ref = model(batch), plain(batch)
    assert text_config._attn_implementation == "eager"
    torch.testing.assert_close(out.ce_loss, ref.ce_loss)  # eager attention computes what SDPA does
    assert ref.grounding_loss is None and out.grounding_loss is not None

    image_token = model._base_vlm().config.image_token_id
    visual = batch.input_ids[0] == image_token
    queries = model.grounding_queries(batch)

    def looked():  # the grounding layer's attention, returned by the forward (no hook keeps it)
        return model.run_vlm(batch, output_attentions=True).attentions[-1]

    def mass_on_target():
        attention = looked()
        return model.grounding_loss(batch, attention), [
            float((attention[r, 0, q, visual].detach() * (wanted > 0)).sum()) for r, q, _, wanted in queries]

    loss, before = mass_on_target()
    attention = looked()
    by_hand = torch.stack([-(w * torch.log(attention[r, 0, q, visual] + 1e-6)).sum() for r, q, _, w in queries]).mean()
    torch.testing.assert_close(loss, by_hand)
    torch.testing.assert_close(out.loss, out.grounding_loss)  # the only term left on
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(15):
        optimizer.zero_grad()
        model(batch).loss.backward()
        optimizer.step()
    _, after = mass_on_target()
    assert all(y > x + 0.2 for x, y in zip(before, after)), (before, after)
    with torch.no_grad():
        assert model.eval()(batch).grounding_loss is None  # outside training no attention is asked for


def test_an_answer_marked_no_target_looks_at_the_vision_start_sink(bases, image):
    model = make_model(bases, use_lora=False, grounding_weight=1.0)
    sample = Sample(image, [[("Segment the red square.", "[SEG].")], [("Segment the blue circle.", "There is no blue circle.")],
                            [("Describe it.", "A red square.")]], target()[None], name="s0", meta={"no_target": [1]})
    batch = model.collator([sample])
    queries = model.grounding_queries(batch)
    refusal = [(q, keys, wanted) for r, q, keys, wanted in queries if r == 1]
    assert len(refusal) == 1 and not [r for r, *_ in queries if r == 2]  # the caption is not marked
    q, keys, wanted = refusal[0]
    assert batch.labels[1, q] == -100 and batch.labels[1, q + 1] != -100
    assert keys.tolist() == torch.nonzero(batch.input_ids[1] == model.processor.vision_start)[:, 0].tolist() and wanted.tolist() == [1.0]
    unmarked = model.grounding_queries(model.collator([Sample(image, sample.conversations, sample.masks, name="s0")]))
    assert [r for r, *_ in unmarked] == [0, 0]  # without the mark, a refusal is not supervised
    model.config.grounding_sink = False
    assert [r for r, *_ in model.grounding_queries(batch)] == [0, 0]  # nor with the sink turned off
