"""The segmenter contract, checked on every registered design (each has a tiny builder in
tests/helpers/tiny_segmenters.py): sizes, request checks, explicit image state, threads,
batched requests and a save -> load round trip."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from tests.helpers.tiny_segmenters import BUILDERS
from vlmsam.engine import registry
from vlmsam.engine.contract import EncodedImage
from vlmsam.errors import PromptError

REQUESTS = ["the red square", "What would you use to cut bread here?", "all the shapes", "the blue one"]


def test_every_registered_design_has_a_tiny_builder():
    assert set(registry.available()) <= set(BUILDERS)


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def seg(request, tmp_path_factory):
    return BUILDERS[request.param](tmp_path_factory.mktemp(request.param))


def images():
    rng = np.random.default_rng(0)
    a = (rng.random((60, 80, 3)) * 255).astype(np.uint8)
    a[10:30, 20:50] = (230, 30, 30)
    b = (rng.random((48, 40, 3)) * 255).astype(np.uint8)
    b[5:20, 5:30] = (30, 30, 230)
    return a, b


def same(x, y):
    assert x.text == y.text
    assert np.array_equal(x.masks, y.masks)
    np.testing.assert_allclose(x.scores, y.scores, atol=1e-5)
    np.testing.assert_allclose(x.boxes, y.boxes, atol=1e-5)


def test_results_have_the_image_size_and_valid_boxes(seg):
    for image in images():
        encoded = seg.encode(image)
        assert isinstance(encoded, EncodedImage) and encoded.size == image.shape[:2] and encoded.owner == seg.name
        for result in seg.segment_many(encoded, REQUESTS):
            h, w = image.shape[:2]
            assert result.masks.shape[1:] == (h, w) and result.masks.dtype == bool
            assert result.boxes.shape == (result.num_masks, 4) and result.scores.shape == (result.num_masks,)
            assert np.isfinite(result.scores).all()
            assert ((result.boxes[:, 0] <= result.boxes[:, 2]) & (result.boxes[:, 1] <= result.boxes[:, 3])).all()
            assert (result.boxes >= 0).all() and (result.boxes[:, [0, 2]] <= w).all() and (result.boxes[:, [1, 3]] <= h).all()
            if seg.capabilities.marks_masks:  # designs whose answer says where each mask goes
                assert result.text.count("[mask ") == result.num_masks


@pytest.mark.parametrize("bad, words", [("", "empty"), ("   \n\t", "empty"), ("x" * 20000, "20,000 characters")])
def test_bad_requests_are_one_line_errors(seg, bad, words):
    encoded = seg.encode(images()[0])
    for call in (lambda: seg.segment(encoded, bad), lambda: seg.segment_many(encoded, ["fine", bad])):
        with pytest.raises(PromptError, match=words) as info:
            call()
        assert "\n" not in str(info.value)


def test_a_handle_is_checked(seg):
    with pytest.raises(PromptError, match="EncodedImage"):
        seg.segment(images()[0], "the red square")
    with pytest.raises(PromptError, match="list of requests"):
        seg.segment_many(seg.encode(images()[0]), "the red square")


def test_interleaved_images_give_what_each_gives_alone(seg):
    a, b = images()
    alone_a = [seg.segment(seg.encode(a), r) for r in REQUESTS[:2]]
    alone_b = [seg.segment(seg.encode(b), r) for r in REQUESTS[:2]]
    ea, eb = seg.encode(a), seg.encode(b)
    mixed = [(seg.segment(ea, r), seg.segment(eb, r)) for r in REQUESTS[:2]]
    for (x, y), xa, yb in zip(mixed, alone_a, alone_b):
        same(x, xa)
        same(y, yb)


def test_threads_share_one_segmenter(seg):
    a, b = images()
    expected = {id(img): [seg.segment(seg.encode(img), r) for r in REQUESTS] for img in (a, b)}
    got, errors = {}, []

    def work(img, k):
        try:
            encoded = seg.encode(img)
            got[(id(img), k)] = [seg.segment(encoded, r) for r in REQUESTS]
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(img, k)) for k in range(3) for img in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert len(got) == 6
    for (key, _), results in got.items():
        for x, y in zip(results, expected[key]):
            same(x, y)


def test_segment_many_equals_segment(seg):
    encoded = seg.encode(images()[0])
    for batched, request in zip(seg.segment_many(encoded, REQUESTS), REQUESTS):
        same(batched, seg.segment(encoded, request))
    assert seg.segment_many(encoded, []) == []


def test_save_and_load_give_identical_results(seg, tmp_path):
    seg.save_pretrained(tmp_path / "ckpt")
    loaded = registry.load(tmp_path / "ckpt")  # the checkpoint names its design
    assert loaded.name == seg.name
    image = images()[0]
    options = {"max_new_tokens": 8}
    for x, y in zip(seg.segment_many(seg.encode(image), REQUESTS, **options),
                    loaded.segment_many(loaded.encode(image), REQUESTS, **options)):
        same(x, y)
    with pytest.raises(PromptError, match="another segmenter"):
        loaded.segment(seg.encode(image), "the red square")


def test_a_design_that_implements_neither_segment_is_told_so():
    from vlmsam.engine.contract import SegmenterBase

    class Half(SegmenterBase):
        name = "half"

        def _encode(self, image, key):
            return self.handle(image, key)

    half = Half()
    encoded = half.encode(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(NotImplementedError, match="neither _segment nor _segment_many"):
        half.segment(encoded, "the square")


def test_the_user_object_takes_a_handle_in_the_engines_order():
    from vlmsam.segmenter import load_segmenter

    seg = load_segmenter()
    a, _ = images()
    encoded = seg.encode(a)
    by_handle = seg.segment(encoded, "the red square")
    assert seg.current is None  # a handle passed in is not made the current image
    same(by_handle, seg.segment_many(encoded, ["the red square"])[0])
    same(by_handle, seg.segment("the red square", image=a))


def test_options_are_checked_by_the_design(seg):
    """An option the design does not take, or a value of the wrong kind, is one line; never ignored."""
    a, _ = images()
    encoded = seg.encode(a)
    with pytest.raises(PromptError, match="takes no option 'max_new_token'"):
        seg.segment(encoded, "the red square", max_new_token=4)  # misspelled
    with pytest.raises(PromptError, match="max_new_tokens must be a whole number"):
        seg.segment_many(encoded, ["the red square"], max_new_tokens=0)
    with pytest.raises(PromptError, match="is_sentence must be"):
        seg.segment(encoded, "the red square", is_sentence="yes")
    if seg.capabilities.keeps_history:
        with pytest.raises(PromptError, match="history must be"):
            seg.segment(encoded, "the red square", history=["not a pair"])
        seg.segment(encoded, "the red square", history=[("what is it?", "a square")])
    else:
        with pytest.raises(PromptError, match="takes no option 'history'"):
            seg.segment(encoded, "the red square", history=[("what is it?", "a square")])


def test_the_served_agent_chooses_masks_and_saves_a_checkpoint_that_names_its_server(tmp_path):
    """The suite's served agent is not trivially empty, and its checkpoint names the server it talks to."""
    import json

    seg = BUILDERS["agent_served"](tmp_path)
    result = seg.segment(seg.encode(images()[0]), "all the shapes")
    assert result.num_masks == 1 and result.info["reason"] == "selected" and result.masks.any()
    saved = seg.save_pretrained(tmp_path / "ckpt")
    config = json.loads((saved / "vlmsam_config.json").read_text())
    assert config["vlm"] == "scripted" and config["vlm_endpoint"] == seg.vlm.endpoint and not (saved / "vlm").exists()


def test_the_local_agent_encodes_only_what_its_conversation_uses(tmp_path):
    """Its conversation starts from its own system prompt: the default prefix's key/value cache is not made."""
    seg = BUILDERS["agent"](tmp_path)
    prefix = seg.encode(images()[0]).vlm
    assert prefix.kv is None and prefix.n_tokens > 0
