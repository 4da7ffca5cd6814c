"""Noun phrases over a synthetic scene, each with every instance it names: SAM 3's kind of sample.

A scene's ``scene`` list (every shape in painting order, ``vlmsam data synth``) gives phrases such as
"circle", "red shapes", "blue hexagons" and "the stars", each naming *all* matching shapes (singular or
plural alike, as SAM 3's concept prompts do), and phrases that name nothing in the scene (an absent
colour, shape or combination), whose answer is no instance at all.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass

from vlmsam.data.synth import COLORS, SHAPES


# Every word a scene phrase uses (a tiny SAM 3's tokenizer makes each one token).
VOCABULARY = (*COLORS, *SHAPES, *(s + ("es" if s.endswith("x") else "s") for s in SHAPES), "shape", "shapes", "object", "objects",
              "all", "the", "every", "each", "visual", "thing", "things")


@dataclass(frozen=True)
class Phrase:
    text: str
    instances: tuple[int, ...]  # indices into the scene list (painting order); empty: names nothing

    @property
    def negative(self) -> bool:
        return not self.instances


def plural(shape: str) -> str:
    return shape + ("es" if shape.endswith("x") else "s")


def _word(shape: str, many: bool) -> str:
    return plural(shape) if many else shape


def concepts(scene: list[dict]) -> dict[tuple[str | None, str | None], tuple[int, ...]]:
    """``(colour or None, shape or None) -> instance indices`` for every concept the scene can ask about."""
    found: dict[tuple[str | None, str | None], list[int]] = {}
    for k, s in enumerate(scene):
        for key in ((s["color"], s["shape"]), (s["color"], None), (None, s["shape"]), (None, None)):
            found.setdefault(key, []).append(k)
    return {key: tuple(v) for key, v in found.items()}


def phrase_text(color: str | None, shape: str | None, many: bool, rng: random.Random) -> str:
    noun = _word(shape, many) if shape else ("shapes" if many else "shape")
    text = f"{color} {noun}" if color else noun
    return f"{rng.choice(['the ', 'all the ', 'all '])}{text}" if many and rng.random() < 0.3 else text


def scene_phrases(scene: list[dict], rng: random.Random, n: int = 6, negative_rate: float = 0.3) -> list[Phrase]:
    """``n`` distinct phrases over ``scene``, about ``negative_rate`` of them naming nothing in it."""
    present = concepts(scene)
    positives = [key for key in present if key != (None, None)]
    absent = [(c, s) for c in (*COLORS, None) for s in (*SHAPES, None) if (c, s) != (None, None) and (c, s) not in present]
    out: dict[str, Phrase] = {}
    for _ in range(n * 4):
        if len(out) >= n:
            break
        negative = absent and (not positives or rng.random() < negative_rate)
        color, shape = rng.choice(absent if negative else positives)
        instances = () if negative else present[(color, shape)]
        text = phrase_text(color, shape, many=len(instances) > 1 or rng.random() < 0.5, rng=rng)
        out.setdefault(text, Phrase(text, instances))
    return list(out.values())


def phrases_for(name: str, scene: list[dict], n: int = 6, negative_rate: float = 0.3) -> list[Phrase]:
    """The phrases of one named scene: the same every time it is read (a resumed run sees the same data)."""
    return scene_phrases(scene, random.Random(zlib.crc32(name.encode())), n, negative_rate)
