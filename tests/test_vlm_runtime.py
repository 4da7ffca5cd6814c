"""The shared VLM runtime on tiny real Qwen-VL models: loading, the resized frame, chat with history,
batched generation equal to one-at-a-time generation and to transformers' own generate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlmsam.vlm.runtime import VlmRuntime
from vlmsam.vlm.tiny import save_tiny_vlm


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen2_vl", "qwen3_vl"])
def vlm(request, tmp_path_factory):
    path = save_tiny_vlm(tmp_path_factory.mktemp(request.param), request.param)
    return VlmRuntime.load(path, dtype="fp32", device="cpu")


@pytest.fixture
def image():
    return (np.random.default_rng(0).random((50, 70, 3)) * 255).astype(np.uint8)


def test_loads_in_the_dtype_asked(vlm, tmp_path):
    assert next(vlm.model.parameters()).dtype == torch.float32
    path = save_tiny_vlm(tmp_path / "bf16", "qwen2_5_vl")
    bf16 = VlmRuntime.load(path, dtype="bf16")
    assert {p.dtype for p in bf16.model.parameters()} == {torch.bfloat16}


def test_model_input_size_is_the_processors_resized_frame(vlm, image):
    prefix = vlm.encode_image(image)
    w, h = vlm.model_input_size(prefix)
    patch = vlm.processor.image_processor.patch_size
    merge = vlm.processor.image_processor.merge_size
    assert w % (patch * merge) == 0 and h % (patch * merge) == 0
    assert prefix.n_tokens == (w // patch) * (h // patch) // merge**2


def test_batched_generation_equals_transformers_generate(vlm, image):
    """Our decoding (shared prefix, explicit positions) gives what transformers' generate gives."""
    prefix = vlm.encode_image(image)
    conversations = [[("What is in this image?", None)], [("Describe the colours, please.", None)],
                     [("What is this?", "A picture."), ("And its size?", None)]]
    ours = vlm.generate(prefix, conversations, max_new_tokens=8)
    for turns, answer in zip(conversations, ours):
        ids = vlm.prompt_ids(prefix, turns)[None]
        out = vlm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=prefix.pixel_values,
                                 image_grid_thw=prefix.grid, mm_token_type_ids=vlm.processor.mm_token_type_ids(ids),
                                 max_new_tokens=8, do_sample=False, eos_token_id=vlm.processor.im_end,
                                 pad_token_id=vlm.processor.tokenizer.pad_token_id)
        theirs = out[0, ids.shape[1]:].tolist()
        if vlm.processor.im_end in theirs:
            theirs = theirs[: theirs.index(vlm.processor.im_end)]
        assert answer.tokens.tolist() == theirs


def test_chat_keeps_earlier_turns_in_context(vlm, image):
    prefix = vlm.encode_image(image)
    history = [("What is this?", "A picture of noise.")]
    with_history = vlm.prompt_ids(prefix, [*history, ("Frame the noise.", None)])
    without = vlm.prompt_ids(prefix, [("Frame the noise.", None)])
    assert len(with_history) > len(without)
    assert vlm.decode(with_history, skip_special_tokens=False).count("A picture of noise.") == 1
    a = vlm.chat(prefix, "Frame the noise.", history=history, max_new_tokens=6)
    (b,) = vlm.generate(prefix, [[*history, ("Frame the noise.", None)]], max_new_tokens=6)
    assert a == vlm.decode(b.tokens)



def test_a_multi_picture_conversation_sees_what_transformers_sees(vlm, image):
    """The agent's local conversation caches each picture's vision features (and Qwen3-VL's deepstack
    slices) and joins those of the pictures it feeds: the language model's states over a two-picture
    conversation equal those transformers computes from the pixels, and the answer equals its generate's."""
    from PIL import Image

    from vlmsam.vlm.conversation import _joined
    from vlmsam.vlm.messages import Message

    first = Image.fromarray(image)
    second = Image.fromarray((np.random.default_rng(1).random((60, 80, 3)) * 255).astype(np.uint8))
    messages = [Message("system", "You segment."), Message("user", (first, "the red circle")),
                Message("assistant", "Looking."), Message("user", (second, "and now?"))]
    conversation = vlm.conversation(vlm.encode_image(first), first)
    ours = conversation.reply(messages, max_new_tokens=8)
    ids = torch.tensor(conversation._tokens(messages)[0])[None]
    pictures = [vlm.processor.image_inputs(picture) for picture in (first, second)]
    pixels, grids = torch.cat([p[0] for p in pictures]), torch.cat([p[1] for p in pictures])
    common = dict(input_ids=ids, attention_mask=torch.ones_like(ids), image_grid_thw=grids,
                  mm_token_type_ids=vlm.processor.mm_token_type_ids(ids))
    with torch.inference_mode():
        reference = vlm.model.model(pixel_values=pixels, **common).last_hidden_state
        cached = _joined([conversation._image(picture)[3] for picture in (first, second)])
        joined = vlm.model.model(mm_encoder_outputs={"image": cached}, **common).last_hidden_state
    torch.testing.assert_close(joined, reference)
    out = vlm.model.generate(pixel_values=pixels, max_new_tokens=8, do_sample=False, eos_token_id=vlm.processor.im_end,
                             pad_token_id=vlm.processor.tokenizer.pad_token_id, **common)
    theirs = out[0, ids.shape[1]:].tolist()
    if vlm.processor.im_end in theirs:
        theirs = theirs[: theirs.index(vlm.processor.im_end)]
    assert ours == vlm.decode(torch.tensor(theirs, dtype=torch.long))
