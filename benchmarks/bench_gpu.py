"""Real-size figures on one GPU: Qwen2.5-VL-7B and SAM ViT-H shapes, random weights, bf16.

Prints one ``key=value`` line per figure: ``gpu=`` (its name), ``load_s`` (the saved checkpoints
loaded onto the GPU as a [SEG] segmenter), ``first_mask_s`` (encode an 896x672 image, answer one
request of 32 tokens ending in [SEG], draw the mask), ``ms_per_request_8`` (8 requests on the
encoded image in one ``segment_many``, per request), ``ms_per_request_1`` (the same requests one
at a time) and ``peak_gpu_gib``. Writes about 17 GB of checkpoints to a temporary directory; about
5 minutes on one H100/H200. Without CUDA it says so and exits 0.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))


def qwen2_5_vl_7b_config(tok):
    from transformers import Qwen2_5_VLConfig

    ids = tok.convert_tokens_to_ids
    return Qwen2_5_VLConfig(
        text_config=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                         num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=128000, tie_word_embeddings=False,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
                         eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>"), bos_token_id=None),
        vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                           window_size=112, fullatt_block_indexes=[7, 15, 23, 31]),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
    )


def sam_vit_h_config():
    from transformers import SamConfig

    return SamConfig(vision_config=dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16,
                                        global_attn_indexes=[7, 15, 23, 31], initializer_range=0.02))


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device here: bench_gpu measures nothing on a CPU-only torch")
        return 0
    from realsize import Force
    from transformers import Qwen2_5_VLForConditionalGeneration, SamModel
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from vlmsam.segmenter import load_segmenter
    from vlmsam.vlm.tiny import build_tokenizer

    print(f"gpu={torch.cuda.get_device_name(0).replace(' ', '_')}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tok = build_tokenizer()
        torch.set_default_dtype(torch.bfloat16)
        with torch.device("cuda"):  # random init on the GPU is fast
            Qwen2_5_VLForConditionalGeneration(qwen2_5_vl_7b_config(tok)).save_pretrained(root / "vlm")
            SamModel(sam_vit_h_config()).save_pretrained(root / "sam")
        torch.set_default_dtype(torch.float32)
        tok.save_pretrained(root / "vlm")
        Qwen2VLImageProcessorPil().save_pretrained(root / "vlm")
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        seg = load_segmenter(vlm=str(root / "vlm"), sam=str(root / "sam"), segmenter="seg_token", device="cuda",
                             dtype="bf16", max_new_tokens=32)
        torch.cuda.synchronize()
        print(f"load_s={time.perf_counter() - t0:.1f}")
    model = seg.model
    answer = model.processor.answer_ids("Sure, it is " + "the thing " * 20)[:31] + [model.config.seg_token_id]
    answer += [model.processor.im_end] * 4
    image = (np.random.default_rng(0).random((672, 896, 3)) * 255).astype(np.uint8)
    requests = ["the knife", "what would you cut bread with?", "the red cup on the left", "all the plates",
                "Which object keeps the food cold?", "the largest window", "the chair nearest the door", "the cat"]
    seg.segment_many(seg.encode(image), requests[:2], logits_processor=Force(answer))  # warm-up (kernels, allocator)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    encoded = seg.encode(image)
    seg.segment_many(encoded, requests[:1], logits_processor=Force(answer))
    torch.cuda.synchronize()
    print(f"first_mask_s={time.perf_counter() - t0:.2f}")
    t0 = time.perf_counter()
    seg.segment_many(encoded, requests, logits_processor=Force(answer))
    torch.cuda.synchronize()
    print(f"ms_per_request_8={(time.perf_counter() - t0) * 1000 / len(requests):.0f}")
    t0 = time.perf_counter()
    for r in requests:
        seg.segment_many(encoded, [r], logits_processor=Force(answer))
    torch.cuda.synchronize()
    print(f"ms_per_request_1={(time.perf_counter() - t0) * 1000 / len(requests):.0f}")
    print(f"peak_gpu_gib={torch.cuda.max_memory_allocated() / 2**30:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
