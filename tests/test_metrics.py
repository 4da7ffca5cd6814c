import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from vlmsam.metrics import IoUAccumulator, intersection_union, pair_iou


def test_hand_computed_pair_with_ignore_pixels():
    target = np.array(
        [[1, 1, 0, 0],
         [1, 1, 0, 255],
         [0, 0, 0, 255]], np.uint8)
    pred = np.array(
        [[1, 0, 0, 0],
         [1, 1, 1, 1],   # the 1 under 255 is ignored
         [0, 0, 0, 1]], bool)  # ignored as well
    i, u = intersection_union(pred, target)
    assert (i, u) == (3, 5)  # I: (0,0) (1,0) (1,1); U adds (0,1) from the target and (1,2) from pred
    assert pair_iou(i, u) == pytest.approx(3 / (5 + 1e-5), abs=0)


def test_empty_target_and_empty_prediction_scores_one():
    acc = IoUAccumulator()
    assert acc.update(np.zeros((5, 5), bool), np.zeros((5, 5), np.uint8)) == [1.0]
    assert acc.giou == 1.0
    assert acc.ciou == 0.0  # nothing to intersect: 0 / (0 + 1e-10)


def test_empty_target_with_prediction_scores_zero():
    pred = np.zeros((5, 5), bool)
    pred[0, 0] = True
    acc = IoUAccumulator()
    assert acc.update(pred, np.zeros((5, 5), np.uint8)) == [0.0]


def test_all_ignored_target_counts_as_empty():
    pred = np.ones((3, 3), bool)
    assert intersection_union(pred, np.full((3, 3), 255, np.uint8)) == (0, 0)


def test_several_masks_per_image_and_set_level_ciou():
    t = np.zeros((3, 10, 10), np.uint8)
    p = np.zeros((3, 10, 10), bool)
    t[0, :, :5] = 1; p[0, :, :5] = True            # I=50 U=50 -> 1.0
    t[1, :2, :] = 1; p[1, :1, :] = True            # I=10 U=20 -> 0.5
    t[2, 0, 0] = 1                                 # I=0  U=1  -> 0.0
    acc = IoUAccumulator()
    ious = acc.update(p, t)
    assert ious == pytest.approx([50 / (50 + 1e-5), 10 / (20 + 1e-5), 0.0], abs=0)
    assert acc.count == 3
    assert acc.giou == pytest.approx(sum(ious) / 3, abs=0)
    assert acc.ciou == pytest.approx(60 / (71 + 1e-10), abs=0)
    # a second image is a further set of pairs, not an average of averages
    acc.update(np.ones((1, 10, 10), bool), np.ones((1, 10, 10), np.uint8))
    assert acc.giou == pytest.approx((sum(ious) + 100 / (100 + 1e-5)) / 4, abs=0)
    assert acc.ciou == pytest.approx(160 / (171 + 1e-10), abs=0)


def test_mismatched_counts_and_shapes_raise():
    with pytest.raises(ValueError, match="pair them"):
        IoUAccumulator().update(np.zeros((2, 4, 4)), np.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match="shape"):
        intersection_union(np.zeros((4, 4)), np.zeros((4, 5)))


def test_all_reduce_under_torchrun_equals_one_process(tmp_path):
    """Two real ranks score disjoint shards; the all-reduced sums equal one process scoring all."""
    script = tmp_path / "score.py"
    script.write_text(textwrap.dedent("""
        import json, os, sys
        import numpy as np
        import torch.distributed as dist
        from vlmsam.metrics import IoUAccumulator

        def pairs():
            rng = np.random.default_rng(7)
            for _ in range(6):
                target = rng.integers(0, 2, (16, 16)).astype(np.uint8)
                target[rng.random((16, 16)) < 0.1] = 255
                yield rng.random((16, 16)) < 0.5, target

        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        acc = IoUAccumulator()
        for k, (p, t) in enumerate(pairs()):
            if k % world == rank:
                acc.update(p, t)
        acc.all_reduce()
        full = IoUAccumulator()
        for p, t in pairs():
            full.update(p, t)
        if rank == 0:
            json.dump({"sharded": acc.summary(), "single": full.summary()}, open(sys.argv[1], "w"))
        dist.barrier()
        dist.destroy_process_group()
    """))
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), str(out)],
        capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["sharded"]["n"] == result["single"]["n"] == 6
    assert result["sharded"]["giou"] == pytest.approx(result["single"]["giou"], rel=1e-12)
    assert result["sharded"]["ciou"] == pytest.approx(result["single"]["ciou"], rel=1e-12)
