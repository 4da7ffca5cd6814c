"""tools/grounding_ceiling.py: the truth's own prompts, one per connected part of the target."""

from __future__ import annotations

import numpy as np

from tools.grounding_ceiling import truth_prompts


def test_the_ceiling_prompts_each_part_of_the_target_once():
    truth = np.zeros((40, 60), bool)
    truth[5:15, 5:25] = True  # a 20 x 10 part
    truth[20:36, 40:56] = True  # a 16 x 16 part
    truth[0, 59] = True  # a speck, dropped
    points, boxes = truth_prompts(truth)
    assert boxes.tolist() == [[5, 5, 25, 15], [40, 20, 56, 36]]  # tight, x2 and y2 exclusive
    assert all(truth[int(y), int(x)] for (x, y), in points)  # each point inside its part
