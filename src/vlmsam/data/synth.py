"""Synthetic reasoning scenes, in the ReasonSeg layout, so that everything runs without downloads.

``vlmsam data synth --out DIR --n N --seed S`` writes ``DIR/reason_seg/ReasonSeg/{train,val,test}/X.jpg``
and LabelMe-style ``X.json`` (``text``, ``is_sentence``, ``shapes``), which every ReasonSeg loader,
the evaluator and the scorer read unchanged. Each json also records the request's ``kind`` and
the canonical ``answer``; target polygons are labelled ``target_0``, ``target_1``, ... in answer
order (left to right), which :class:`SynthDataset` uses to give one mask per ``[SEG]``.

Scenes: 2-6 shapes (circle, square, triangle, star, hexagon) in eight colours, varied sizes,
positions, rotations and overlaps, on flat / gradient / noise / texture backgrounds, rendered
with or without antialiasing, blurred or not, at varied JPEG quality, size and aspect ratio.
Targets are drawn last, so a target's polygon is exactly its visible region.

Request kinds: ``attribute`` ("the red circle"), ``relation`` ("the shape left of the blue
square"), ``superlative`` ("the largest triangle", "the leftmost shape"), ``uniqueness`` ("the
shape whose colour appears only once"), ``multiple`` ("all the stars", one ``[SEG]`` per target)
and ``none`` (nothing matches: the answer says so, with no mask). Each comes as a short phrase or
as a reasoning sentence.
"""

from __future__ import annotations

import io
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from vlmsam.data import phrasings, prompts
from vlmsam.data.masks import fill_polygon
from vlmsam.data.reason_seg import find_root
from vlmsam.engine.contract import is_sentence as looks_like_sentence
from vlmsam.errors import DatasetError

COLORS = {
    "red": (215, 35, 35), "green": (40, 165, 55), "blue": (35, 75, 220), "yellow": (240, 215, 30),
    "orange": (245, 135, 25), "purple": (135, 55, 175), "white": (245, 245, 245), "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle", "star", "hexagon")
KINDS = ("attribute", "relation", "superlative", "uniqueness", "multiple", "none")
KIND_WEIGHTS = (0.22, 0.18, 0.2, 0.1, 0.15, 0.15)
SPLITS = {"train": 0.8, "val": 0.1, "test": 0.1}


@dataclass
class Shape:
    kind: str
    color: str
    cx: float
    cy: float
    r: float
    angle: float

    @property
    def name(self) -> str:
        return f"{self.color} {self.kind}"

    def polygon(self) -> list[tuple[float, float]]:
        if self.kind == "circle":
            n, radii = 40, [self.r]
        elif self.kind == "star":
            n, radii = 10, [self.r, self.r * 0.45]
        else:
            n, radii = {"square": 4, "triangle": 3, "hexagon": 6}[self.kind], [self.r]
        start = self.angle + (math.pi / 4 if self.kind == "square" else -math.pi / 2)
        return [(self.cx + radii[k % len(radii)] * math.cos(start + 2 * math.pi * k / n),
                 self.cy + radii[k % len(radii)] * math.sin(start + 2 * math.pi * k / n)) for k in range(n)]

    def area(self) -> float:
        pts = self.polygon()
        return 0.5 * abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(pts, pts[1:] + pts[:1])))


# ---- scenes ---------------------------------------------------------------------------------------


def _layout(rng: random.Random, w: int, h: int) -> list[Shape]:
    n = rng.randint(2, 6)
    shapes: list[Shape] = []
    lo, hi = max(6.0, min(w, h) * 0.07), min(w, h) * 0.2
    for _ in range(200):
        if len(shapes) == n:
            break
        r = rng.uniform(lo, hi)
        s = Shape(rng.choice(SHAPES), rng.choice(list(COLORS)), rng.uniform(r + 1, w - r - 1), rng.uniform(r + 1, h - r - 1),
                  r, rng.uniform(0, 2 * math.pi))
        # Mostly apart; sometimes a moderate overlap (never one shape hiding another).
        overlap_ok = rng.random() < 0.25
        if all(math.dist((s.cx, s.cy), (o.cx, o.cy)) > (0.75 if overlap_ok else 1.08) * (s.r + o.r) for o in shapes):
            shapes.append(s)
    return shapes


def _background(rng: random.Random, w: int, h: int) -> Image.Image:
    kind = rng.choice(["flat", "gradient", "noise", "texture"])
    base = np.array([rng.randint(60, 200) for _ in range(3)], np.float32)
    if kind == "flat":
        arr = np.broadcast_to(base, (h, w, 3)).copy()
    elif kind == "gradient":
        other = np.array([rng.randint(40, 220) for _ in range(3)], np.float32)
        t = np.linspace(0, 1, w if rng.random() < 0.5 else h, dtype=np.float32)
        t = t[None, :, None] if len(t) == w else t[:, None, None]
        arr = base * (1 - t) + other * t + np.zeros((h, w, 3), np.float32)
    elif kind == "noise":
        arr = base + np.random.default_rng(rng.randrange(2**31)).normal(0, 25, (h, w, 3))
    else:  # stripes or checks
        yy, xx = np.mgrid[0:h, 0:w]
        period = rng.randint(6, 18)
        pattern = ((xx // period + yy // period) % 2) if rng.random() < 0.5 else ((xx + yy) // period % 2)
        arr = base + (pattern[..., None] * rng.uniform(15, 40))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def render(shapes: list[Shape], order: list[int], rng: random.Random, w: int, h: int) -> bytes:
    """JPEG bytes of the scene, shapes painted in ``order`` (targets last)."""
    scale = rng.choice([1, 1, 2, 4])  # > 1: supersampled, i.e. antialiased
    img = _background(rng, w, h).resize((w * scale, h * scale), Image.NEAREST)
    draw = ImageDraw.Draw(img)
    for k in order:
        s = shapes[k]
        jitter = tuple(int(np.clip(c + rng.randint(-18, 18), 0, 255)) for c in COLORS[s.color])
        draw.polygon([(x * scale, y * scale) for x, y in s.polygon()], fill=jitter)
    if scale > 1:
        img = img.resize((w, h), Image.LANCZOS)
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=rng.randint(60, 95))
    return buf.getvalue()


# ---- requests -------------------------------------------------------------------------------------

PHRASE = {
    "attribute": ["the {name}"],
    "relation": ["the shape {rel} the {name}"],
    "superlative": ["the {sup}"],
    "uniqueness": ["the shape whose {what} appears only once"],
    "multiple": ["all the {group}"],
    "none": ["the {name}"],
}
SENTENCE = {
    "attribute": ["Which object in this picture is the {name}?", "I need the {name}; which one is it?"],
    "relation": ["Look at the {name}. Which shape is {rel} it?", "Find the one shape that is {rel} the {name}."],
    "superlative": ["Among all the shapes, which is the {sup}?", "If you compare the shapes, which one is the {sup}?"],
    "uniqueness": ["Every {what} but one is shared by several shapes. Which shape has the {what} that appears only once?",
                   "Which shape is the odd one out because its {what} appears only once?"],
    "multiple": ["Point out all the {group} in this picture.", "Which shapes are {group}? Mark every one of them."],
    "none": ["Which object in this picture is the {name}?", "I need the {name}; which one is it?"],
}
RELATIONS = {"left of": lambda s, a: s.cx < a.cx - a.r, "right of": lambda s, a: s.cx > a.cx + a.r,
             "above": lambda s, a: s.cy < a.cy - a.r, "below": lambda s, a: s.cy > a.cy + a.r}


def _plural(kind: str) -> str:
    return kind + "es" if kind.endswith("x") else kind + "s"


def _candidates(shapes: list[Shape], rng: random.Random) -> dict[str, list[tuple[dict, list[int]]]]:
    """Per kind: (template fields, target indices) that have exactly the intended answer."""
    names = [s.name for s in shapes]
    out: dict[str, list] = {k: [] for k in KINDS}
    for k, s in enumerate(shapes):
        if names.count(s.name) == 1:
            out["attribute"].append(({"name": s.name}, [k]))
            for rel, test in RELATIONS.items():
                hits = [j for j, o in enumerate(shapes) if j != k and test(o, s)]
                if len(hits) == 1:
                    out["relation"].append(({"name": s.name, "rel": rel}, hits))
    for kind in sorted({s.kind for s in shapes}):
        members = [k for k, s in enumerate(shapes) if s.kind == kind]
        if len(members) >= 2:
            areas = sorted(((shapes[k].area(), k) for k in members), reverse=True)
            if areas[0][0] > 1.4 * areas[1][0]:
                out["superlative"].append(({"sup": f"largest {kind}"}, [areas[0][1]]))
            if areas[-2][0] > 1.4 * areas[-1][0]:
                out["superlative"].append(({"sup": f"smallest {kind}"}, [areas[-1][1]]))
            out["multiple"].append(({"group": _plural(kind)}, members))
    for color in sorted({s.color for s in shapes}):
        members = [k for k, s in enumerate(shapes) if s.color == color]
        if len(members) >= 2:
            out["multiple"].append(({"group": f"{color} shapes"}, members))
    if len(shapes) >= 2:
        for word, key, sign in (("leftmost", "cx", 1), ("rightmost", "cx", -1), ("topmost", "cy", 1), ("bottommost", "cy", -1)):
            ranked = sorted(range(len(shapes)), key=lambda k: sign * getattr(shapes[k], key))
            a, b = shapes[ranked[0]], shapes[ranked[1]]
            if abs(getattr(a, key) - getattr(b, key)) > 0.5 * (a.r + b.r):
                out["superlative"].append(({"sup": f"{word} shape"}, [ranked[0]]))
        areas = sorted(((s.area(), k) for k, s in enumerate(shapes)), reverse=True)
        if areas[0][0] > 1.4 * areas[1][0]:
            out["superlative"].append(({"sup": "largest shape"}, [areas[0][1]]))
        if areas[-2][0] > 1.4 * areas[-1][0]:
            out["superlative"].append(({"sup": "smallest shape"}, [areas[-1][1]]))
    if len(shapes) >= 3:
        for what, attr in (("colour", "color"), ("type", "kind")):
            values = [getattr(s, attr) for s in shapes]
            once = [k for k, v in enumerate(values) if values.count(v) == 1]
            if len(once) == 1:
                out["uniqueness"].append(({"what": what}, once))
    absent = [f"{c} {k}" for c in COLORS for k in SHAPES if f"{c} {k}" not in names]
    # Mostly near misses (a colour or a shape that is in the picture), so the answer needs looking.
    near = [a for a in absent if a.split()[0] in {s.color for s in shapes} or a.split()[1] in {s.kind for s in shapes}]
    for name in rng.sample(near or absent, min(3, len(near or absent))):
        out["none"].append(({"name": name}, []))
    return out


NO_TARGET_ANSWER = "There is no {} in this image."  # a no-target request's answer names the absent shape


def absent_named(answer: str) -> str | None:
    """The shape a no-target answer says is not there ("purple star"), or None for any other answer."""
    head, tail = NO_TARGET_ANSWER.split("{}")
    return answer[len(head):-len(tail)] if answer.startswith(head) and answer.endswith(tail) else None


def _request(kind: str, fields: dict, n_targets: int, rng: random.Random,
             phrasing: str = "original", worded_as: str | None = None) -> tuple[str, bool, str, str]:
    """(request text, is_sentence, answer, wording family) for one candidate of ``kind``, worded as a request
    of ``worded_as`` where given (a no-target request asked as a relation to the shape that is not there)."""
    wording = worded_as or kind
    if phrasing == "original":  # the generator's own templates, drawn exactly as before
        is_sentence = rng.random() < 0.5
        text, family = rng.choice((SENTENCE if is_sentence else PHRASE)[wording]).format(**fields), "original"
    else:
        text, family = phrasings.word(wording, fields, rng, phrasing)
        is_sentence = looks_like_sentence(text)
    if kind == "none":
        answer = NO_TARGET_ANSWER.format(fields["name"])
    elif n_targets == 1:
        answer = prompts.EVAL_ANSWER
    else:
        answer = prompts.multi_answer(n_targets)
    return text, is_sentence, answer, family


def kind_weights(spec: str | None) -> tuple[float, ...]:
    """The generator's kind weights with some replaced: ``"uniqueness=0.3,multiple=0.2"``."""
    if not spec:
        return KIND_WEIGHTS
    pairs = (p.split("=", 1) for p in spec.replace(" ", "").split(",") if p)
    weights = dict(zip(KINDS, KIND_WEIGHTS))
    for kind, value in pairs:
        if kind not in weights:
            raise DatasetError(f"unknown request kind '{kind}' in the synth kind weights; choose from {', '.join(KINDS)}")
        try:
            weights[kind] = float(value)
        except ValueError:
            raise DatasetError(f"synth kind weight '{kind}={value}' is not a number") from None
    return tuple(weights[k] for k in KINDS)


def _colour_without_kind(shapes: list[Shape]) -> list[str]:
    """Names of absent shapes whose colour is in the picture and whose kind is not: the no-target requests a model
    that reads colours but not kinds gets wrong."""
    kinds = {s.kind for s in shapes}
    return [f"{c} {k}" for c in sorted({s.color for s in shapes}) for k in SHAPES if k not in kinds]


def more_requests(scene: list[dict], n: int, rng: random.Random, weights: tuple[float, ...] = KIND_WEIGHTS,
                  phrasing: str = "original", absent_anchor: float = 0.0,
                  kind_check: float = 0.0) -> list[tuple[str, bool, str, list[int]]]:
    """``n`` further requests about a stored scene (its json ``scene`` list), drawn like the
    scene's own (or with other kind ``weights``): (text, is_sentence, answer, target indices
    into ``scene``, left to right). A share ``kind_check`` of the no-target ones names a colour that is in the
    picture with a kind that is not ("the purple star" beside a purple square), so that answering needs the kind
    read as well as the colour; a share ``absent_anchor`` of them is asked as a relation to the shape that is
    not there ("the shape left of the purple star"): nothing matches that either."""
    # Areas and relations do not depend on the rotation, which the json does not keep.
    shapes = [Shape(s["shape"], s["color"], s["center"][0], s["center"][1], s["radius"], 0.0) for s in scene]
    cands = _candidates(shapes, rng)
    kinds = [k for k in KINDS if cands[k]]
    out = []
    for _ in range(n if kinds else 0):
        kind = rng.choices(kinds, weights=[weights[KINDS.index(k)] for k in kinds])[0]
        fields, targets = rng.choice(cands[kind])
        targets = sorted(targets, key=lambda k: (shapes[k].cx, shapes[k].cy))
        worded_as = None
        if kind == "none" and kind_check and rng.random() < kind_check:  # no draw at 0, as below
            fields = {"name": rng.choice(_colour_without_kind(shapes) or [fields["name"]])}
        if kind == "none" and absent_anchor and rng.random() < absent_anchor:  # no draw at 0: runs without it unchanged
            fields, worded_as = {**fields, "rel": rng.choice(sorted(RELATIONS))}, "relation"
        out.append((*_request(kind, fields, len(targets), rng, phrasing, worded_as)[:3], targets))
    return out


def make_scene(rng: random.Random, kind: str | None = None, phrasing: str = "original") -> dict | None:
    """One scene and request, or None when the drawn layout allows no request of ``kind``; ``phrasing``
    chooses the request's wordings (:mod:`vlmsam.data.phrasings`)."""
    w, h = rng.choice([(128, 128), (160, 120), (120, 160), (144, 112), (112, 144), (176, 132)])
    shapes = _layout(rng, w, h)
    cands = _candidates(shapes, rng)
    kind = kind or rng.choices(KINDS, weights=KIND_WEIGHTS)[0]
    if not cands[kind]:
        return None
    fields, targets = rng.choice(cands[kind])
    targets = sorted(targets, key=lambda k: (shapes[k].cx, shapes[k].cy))  # answer order: left to right
    text, is_sentence, answer, family = _request(kind, fields, len(targets), rng, phrasing)
    others = [k for k in range(len(shapes)) if k not in targets]
    rng.shuffle(others)
    order = others + targets
    jpeg = render(shapes, order, rng, w, h)
    labelme = [{"label": f"target_{i}", "points": [[round(x, 2), round(y, 2)] for x, y in shapes[k].polygon()],
                "shape_type": "polygon"} for i, k in enumerate(targets)]
    wording = {} if phrasing == "original" else {"phrasing": family}  # original scenes stay byte-identical
    return {"jpeg": jpeg, "json": {"text": [text], "is_sentence": is_sentence, "shapes": labelme, "kind": kind, **wording,
                                    "answer": answer, "imageWidth": w, "imageHeight": h,
                                    # Every shape, in painting order, so each one's visible region can be
                                    # rebuilt (SAM's promptable pre-training uses all of them).
                                    "scene": [{"shape": shapes[k].kind, "color": shapes[k].color,
                                               "center": [round(shapes[k].cx, 1), round(shapes[k].cy, 1)],
                                               "radius": round(shapes[k].r, 1),
                                               "points": [[round(x, 2), round(y, 2)] for x, y in shapes[k].polygon()]}
                                              for k in order]}}


def visible_masks(scene: list[dict], h: int, w: int) -> np.ndarray:
    """``(N, H, W)`` bool: each shape of a scene json's ``scene`` list (painting order) minus what
    later shapes cover, i.e. exactly what can be seen of it."""
    masks = np.stack([fill_polygon(s["points"], h, w) == 1 for s in scene]) if scene else np.zeros((0, h, w), bool)
    covered = np.zeros((h, w), bool)
    for k in range(len(masks) - 1, -1, -1):
        masks[k] &= ~covered
        covered |= masks[k]
    return masks


def scene_files(data_dir: str | Path, split: str) -> list[Path]:
    """The scene jsons of one split of a ``vlmsam data synth`` directory (pre-training input)."""
    files = sorted((find_root(Path(data_dir)) / split).glob("*.json"))
    if not files:
        raise DatasetError(f"no synthetic scenes under {find_root(Path(data_dir)) / split}: run `vlmsam data synth --out {data_dir}` first")
    return files


def write_synth(out: str | Path, n: int, seed: int = 0, splits: dict[str, float] | None = None, progress: bool = True,
                phrasing: str = "original") -> dict[str, int]:
    """Write ``n`` scenes split into train/val/test, their requests worded as ``phrasing`` says
    (``original``, ``rich`` or ``heldout``: :mod:`vlmsam.data.phrasings`); returns the count per split."""
    if phrasing != "original":
        phrasings.families(phrasing)  # an unknown name fails before anything is written
    from tqdm import tqdm

    splits = splits or SPLITS
    rng = random.Random(seed)
    root = Path(out) / "reason_seg" / "ReasonSeg"
    counts = {}
    names = list(splits)
    sizes = [int(round(n * splits[s])) for s in names]
    sizes[0] += n - sum(sizes)
    bar = tqdm(total=n, desc="synth", unit="scene", disable=not progress)
    for split, size in zip(names, sizes):
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        k = 0
        while k < size:
            kind = rng.choices(KINDS, weights=KIND_WEIGHTS)[0]
            scene = None
            for _ in range(30):  # keep the kinds balanced: redraw the layout, not the kind
                scene = make_scene(rng, kind, phrasing)
                if scene is not None:
                    break
            if scene is None:
                continue
            stem = f"s{seed}_{split}_{k:06d}"
            (folder / f"{stem}.jpg").write_bytes(scene["jpeg"])
            (folder / f"{stem}.json").write_text(json.dumps(scene["json"]))
            k += 1
            bar.update(1)
        counts[split] = size
    bar.close()
    return counts


CAPTION_QUESTION = "Describe the shapes in this image from left to right."


def caption(scene: list[dict]) -> str:
    """Every shape of a scene json's ``scene`` list, left to right: "There are 3 shapes: a red
    circle, a blue square and a green star." """
    names = [f"{'an' if s['color'][0] in 'aeiou' else 'a'} {s['color']} {s['shape']}" for s in sorted(scene, key=lambda s: (s["center"][0], s["center"][1]))]
    return f"There are {len(names)} shapes: {prompts.english_list(names)}."


def __getattr__(name: str):
    # SynthDataset (which reads what this module writes) is importable from here too; loaded on first use,
    # so that importing vlmsam.data.synth_dataset first is not a circular import.
    if name == "SynthDataset":
        from vlmsam.data.synth_dataset import SynthDataset

        return SynthDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
