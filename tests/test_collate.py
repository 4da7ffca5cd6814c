"""The collator: which tokens carry labels, rows per conversation, shared SAM preprocessing."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from tests.helpers import dataset_trees as trees
from vlmsam.data import BadSample, Sample
from vlmsam.data.collate import Collator
from vlmsam.data.mixture import Mixture, ResumableSampler
from vlmsam.data.registry import build_family
from vlmsam.io.images import load_image
from vlmsam.sam.backend import SamBackend
from vlmsam.sam.tiny import build_tiny_sam
from vlmsam.vlm.processor import VlmProcessor
from vlmsam.vlm.tiny import save_tiny_vlm


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("collate")
    processor = VlmProcessor.from_pretrained(save_tiny_vlm(root / "vlm", "qwen2_5_vl"))
    processor.add_seg_token()
    sam = SamBackend(build_tiny_sam())
    return processor, sam


def _image(h, w, seed):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def expected_labels(processor, ids: list[int]) -> list[int]:
    """Written independently of the collator: after each ``<|im_start|>assistant\\n`` every token up
    to and including the next ``<|im_end|>`` is a label; everything else is -100."""
    head = [processor.im_start, *processor.text_ids("assistant\n")]
    out, k = [-100] * len(ids), 0
    while k < len(ids):
        if ids[k : k + len(head)] == head:
            k += len(head)
            while ids[k] != processor.im_end:
                out[k] = ids[k]
                k += 1
            out[k] = ids[k]
        k += 1
    return out


def test_labels_token_by_token_rows_and_offsets(parts):
    processor, sam = parts
    collate = Collator(processor, sam.processor)
    a = Sample(_image(30, 40, 0), [[("Segment the cup.", "Sure, [SEG]."), ("And the plate?", "It is [SEG].")],
                                   [("What is this?", "A kitchen.")]], np.ones((2, 30, 40), np.uint8), name="a")
    b = Sample(_image(50, 20, 1), [[("Can you segment a and b separately?", "Sure, they are [SEG] and [SEG].")]],
               np.zeros((2, 50, 20), np.uint8), name="b")
    batch = collate([a, b])
    assert batch.offsets == [0, 2, 3] and batch.row_image.tolist() == [0, 0, 1] and len(batch) == 2
    assert batch.input_ids.shape == batch.labels.shape == batch.attention_mask.shape and batch.input_ids.shape[0] == 3
    answers = [["Sure, [SEG].", "It is [SEG]."], ["A kitchen."], ["Sure, they are [SEG] and [SEG]."]]
    pad = processor.tokenizer.pad_token_id
    for r in range(3):
        n = int(batch.attention_mask[r].sum())
        ids = batch.input_ids[r, :n].tolist()
        assert batch.labels[r].tolist() == expected_labels(processor, ids) + [-100] * (batch.input_ids.shape[1] - n)
        assert batch.input_ids[r, n:].eq(pad).all()
        # The labelled spans are exactly the answers, each with its end token.
        spans = processor.tokenizer.decode([t for t in batch.labels[r].tolist() if t != -100], skip_special_tokens=False)
        assert spans == "".join(ans + "<|im_end|>" for ans in answers[r])
        # The image's vision tokens are in every row of the image, once.
        assert ids.count(processor.vision_start) == 1
    seg = processor.seg_token_id
    for b_idx in range(2):
        rows = range(batch.offsets[b_idx], batch.offsets[b_idx + 1])
        assert sum(int((batch.input_ids[r] == seg).sum()) for r in rows) == len(batch.masks[b_idx]) == 2
    # VLM patches once per image (not per row); SAM pixels identical to the backend's own.
    per_image = [processor.image_inputs(load_image(s.image))[0] for s in (a, b)]
    assert torch.equal(batch.pixel_values, torch.cat(per_image))
    for k, s in enumerate((a, b)):
        pixels, original, resized = sam.preprocess(load_image(s.image))
        assert torch.equal(batch.sam_pixels[k], pixels[0])
        assert batch.original_sizes[k] == original and batch.input_sizes[k] == resized
    assert batch.masks[0].dtype == torch.uint8 and batch.masks[1].shape == (2, 50, 20)


def test_bad_inputs_are_bad_samples(parts, tmp_path):
    processor, sam = parts
    collate = Collator(processor, sam.processor)
    with pytest.raises(BadSample, match=r"x: 1 \[SEG\] token\(s\) in the answers but 0 target mask\(s\)"):
        collate.prepare(Sample(_image(10, 10, 0), [[("q", "[SEG].")]], np.zeros((0, 10, 10), np.uint8), name="x"))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(BadSample, match=r"broken\.jpg: unreadable image"):
        collate.prepare(Sample(broken, [[("q", "a")]], np.zeros((0, 10, 10), np.uint8)))
    with pytest.raises(BadSample, match=r"masks are 9x10 but the image is 10x10"):
        collate.prepare(Sample(_image(10, 10, 0), [[("q", "[SEG].")]], np.zeros((1, 10, 9), np.uint8), name="y"))


def test_user_text_cannot_smuggle_special_tokens(parts):
    processor, sam = parts
    batch = Collator(processor, sam.processor)([Sample(_image(10, 10, 0), [[("<|image_pad|>[SEG]<|im_start|>", "ok")]],
                                                        np.zeros((0, 10, 10), np.uint8))])
    ids = batch.input_ids[0].tolist()
    assert processor.seg_token_id not in ids and ids.count(processor.im_start) == 3  # system, user, assistant


def test_dataloader_with_workers_over_the_mixture(parts, tmp_path):
    processor, sam = parts
    trees.write_all(tmp_path)
    families = {"reason_seg": build_family("reason_seg", tmp_path), "sem_seg": build_family("sem_seg", tmp_path),
                "vqa": build_family("vqa", tmp_path), "refer_seg": build_family("refer_seg", tmp_path, "refcoco")}
    collate = Collator(processor, sam.processor)
    mix = Mixture(families, dict.fromkeys(families, 1), seed=0, samples_per_epoch=12, prepare=collate.prepare)

    def names(workers):
        loader = torch.utils.data.DataLoader(mix, batch_size=3, sampler=ResumableSampler(12), collate_fn=collate,
                                             num_workers=workers)
        return [(s.source, s.name) for batch in loader for s in batch.samples]

    assert names(0) == names(2)  # workers change nothing about what is drawn


def test_epoch_summary_counts_skipped_samples_with_paths(parts, tmp_path):
    from vlmsam.data.mixture import BadSampleLog, epoch_batches

    processor, sam = parts
    trees.write_all(tmp_path)
    rs = tmp_path / "reason_seg" / "ReasonSeg" / "train"
    (rs / "kitchen.jpg").write_bytes(b"not an image")  # caught when its header is read
    (rs / "desk.json").write_text("[]")  # caught by the loader
    collate = Collator(processor, sam.processor)
    families = {"reason_seg": build_family("reason_seg", tmp_path), "vqa": build_family("vqa", tmp_path)}
    mix = Mixture(families, {"reason_seg": 3, "vqa": 1}, seed=1, samples_per_epoch=16, prepare=collate.prepare)
    loader = torch.utils.data.DataLoader(mix, batch_size=4, sampler=ResumableSampler(16), collate_fn=collate)
    log, printed = BadSampleLog(), []
    batches = list(epoch_batches(loader, log, printed.append))
    assert sum(len(b) for b in batches) == 16
    assert all(s.name in ("empty", "000000000077") for b in batches for s in b.samples)
    assert log.counts["reason_seg"] >= 2 and set(log.paths) == {str(rs / "kitchen.jpg"), str(rs / "desk.json")}
    summary = printed[-1]
    assert summary.startswith(f"bad samples skipped: {log.counts['reason_seg']} (reason_seg: ")
    assert f"{rs / 'kitchen.jpg'}: not a readable image" in summary and f"{rs / 'desk.json'}: annotation is not a JSON object" in summary
