"""The synthetic scenes of :mod:`vlmsam.data.synth` as a training dataset (ReasonSeg layout)."""

from __future__ import annotations

import random

import numpy as np

from vlmsam.data import prompts
from vlmsam.data.masks import fill_polygon
from vlmsam.data.phrasings import with_unknown_words
from vlmsam.data.reason_seg import ReasonSegDataset, read_annotation
from vlmsam.data.sample import BadSample, Sample
from vlmsam.data.synth import CAPTION_QUESTION, caption, kind_weights, more_requests
from vlmsam.errors import DatasetError

EXTRA_PHRASINGS = ("original", "rich", "heldout", "mixed")


class SynthDataset(ReasonSegDataset):
    """Synthetic scenes for training: one mask per target, in answer order, and the request's answer.

    With ``captions`` each scene also carries a second conversation that names every shape, left
    to right. Like the captioning stage of real VLMs it teaches the language model to read colour
    and kind off the vision tokens, densely; without it a VLM trained from scratch answers
    positional requests ("the shape left of ...") well long before it can find "the red circle"
    or tell that "the purple hexagon" is not there.

    With ``describe_first`` the caption is instead the start of the request's own answer, and the
    decision follows it ("There are 3 shapes: a red circle, ... [SEG]." / "... There is no purple
    hexagon in this image."): the model reasons in words before it answers, so whether a "purple
    hexagon" exists, or how many stars there are, is read off its own text.
    """

    source = "synth"

    def __init__(self, dataset_dir, split: str = "train", captions: bool = True, describe_first: bool = False,
                 extra_requests: int = 0, extra_kind_weights: str | None = None, answer_format: str = "seg",
                 frame=None, extra_phrasing: str = "original", request_noise: float = 0.0, absent_anchor: float = 0.0,
                 kind_check: float = 0.0):
        super().__init__(dataset_dir, split, explanatory=0.0, max_queries=1)
        self.captions, self.describe_first, self.extra_requests = captions, describe_first, extra_requests
        if answer_format not in ("seg", "grounding"):
            raise DatasetError(f"synth answer format must be 'seg' or 'grounding', not '{answer_format}'")
        if answer_format == "grounding" and frame is None:
            raise DatasetError("grounding answers need the VLM's resized frame (frame=processor.resized_size)")
        self.answer_format, self.frame = answer_format, frame
        self.extra_weights = kind_weights(extra_kind_weights)
        if extra_phrasing not in EXTRA_PHRASINGS:
            raise DatasetError(f"synth extra phrasing must be one of {', '.join(EXTRA_PHRASINGS)}, not '{extra_phrasing}'")
        self.extra_phrasing = extra_phrasing
        if not 0.0 <= request_noise <= 1.0:
            raise DatasetError(f"synth request noise is a share of requests, between 0 and 1, not {request_noise}")
        if not 0.0 <= absent_anchor <= 1.0:
            raise DatasetError(f"synth absent anchor is a share of no-target requests, between 0 and 1, not {absent_anchor}")
        if not 0.0 <= kind_check <= 1.0:
            raise DatasetError(f"synth kind check is a share of no-target requests, between 0 and 1, not {kind_check}")
        self.request_noise, self.absent_anchor, self.kind_check = request_noise, absent_anchor, kind_check

    def _more_requests(self, scene: list[dict], rng: random.Random) -> list:
        """The further requests about a scene. ``mixed``: each in the generator's own words or the rich
        grammar's, half and half, so a model taught new wordings keeps the old ones."""
        if self.extra_phrasing != "mixed":  # one call, drawn exactly as before the grammar existed
            return more_requests(scene, self.extra_requests, rng, self.extra_weights, self.extra_phrasing,
                                 self.absent_anchor, self.kind_check)
        return [r for _ in range(self.extra_requests)
                for r in more_requests(scene, 1, rng, self.extra_weights, rng.choice(("original", "rich")),
                                       self.absent_anchor, self.kind_check)]

    def _question(self, rng: random.Random):
        """``(text, is_sentence) -> question``: LISA's [SEG] wording, or the box_prompt segmenter's own."""
        if self.answer_format == "grounding":
            from vlmsam.grounding.prompts import grounding_prompt as ask
        else:
            def ask(text, sentence):
                return prompts.question(text, sentence, rng)
        if not self.request_noise:
            return ask
        noised = self._noised(rng)
        return lambda text, sentence: ask(noised(text), sentence)

    def _noised(self, rng: random.Random):
        """``text -> text``: made-up words in a share ``request_noise`` of the requests. Its own generator, seeded
        from the sample's without drawing from it: the same scenes, requests and targets as without noise, only
        worded with made-up words. A str seed (hashed with SHA-512) is the same in every process; hash() of the
        state is not (hash(None) is its address before 3.12)."""
        if not self.request_noise:
            return lambda text: text
        noise = random.Random(str(rng.getstate()))
        return lambda text: with_unknown_words(text, noise) if noise.random() < self.request_noise else text

    def load_requests(self, i: int, rng: random.Random) -> Sample:
        """Every request about scene ``i`` as bare text with its target mask, as ``load_eval`` gives them
        (``meta["queries"]``, ``meta["is_sentence"]``, one mask each): the scene's own and its further
        requests, worded and noised as in training. What reinforcement learning asks (vlmsam.train.grpo_data)."""
        try:  # a hand-edited scene json: any field of the wrong shape is a bad sample, named (as in ``load``)
            return self._requests(i, rng)
        except (KeyError, IndexError, ValueError, TypeError, AttributeError) as exc:
            raise BadSample(self.items[i], f"not a synthetic-scene annotation ({type(exc).__name__}: {exc})") from None

    def _requests(self, i: int, rng: random.Random) -> Sample:
        anno, mask = self._read(i)
        h, w = self.image_size(i)
        worded = self._noised(rng)
        texts, sentences, masks = [worded(anno.texts[0])], [anno.is_sentence], [mask]
        scene = read_annotation(self.items[i]).get("scene")
        for text, sentence, _, targets in (self._more_requests(scene, rng) if self.extra_requests and scene else []):
            shapes = [fill_polygon(scene[k]["points"], h, w) for k in targets]
            texts.append(worded(text))
            sentences.append(sentence)
            masks.append(np.max(shapes, axis=0) if shapes else np.zeros((h, w), np.uint8))
        return Sample(self.image_path(i), [[(t, "")] for t in texts], np.stack(masks), self.source,
                      self.items[i].stem, {"queries": texts, "is_sentence": sentences})

    def load(self, i: int, rng: random.Random) -> Sample:
        path = self.items[i]
        anno = read_annotation(path)
        h, w = self.image_size(i)
        try:  # a hand-edited scene json: any field of the wrong shape is a bad sample, named
            return self._load(i, anno, h, w, rng)
        except (KeyError, IndexError, ValueError, TypeError, AttributeError) as exc:
            raise BadSample(path, f"not a synthetic-scene annotation ({type(exc).__name__}: {exc})") from None

    def _load(self, i: int, anno: dict, h: int, w: int, rng: random.Random) -> Sample:
        path = self.items[i]
        text, is_sentence, answer = anno["text"][0], bool(anno["is_sentence"]), anno["answer"]
        if not isinstance(text, str) or not isinstance(answer, str):
            raise TypeError("text and answer must be strings")
        polygons = sorted(anno["shapes"], key=lambda s: int(s["label"].split("_")[1]))
        masks = np.stack([fill_polygon(s["points"], h, w) for s in polygons]) if polygons else np.zeros((0, h, w), np.uint8)
        # The stored answer is kept as is ("[SEG]." for one target): with LISA's five phrasings
        # no single first token beats "There is no ..." under greedy decoding, and a tiny model
        # trained that way answers every attribute request with "There is no".
        ask = self._question(rng)
        question = ask(text, is_sentence)
        if self.describe_first and anno.get("scene"):
            conversations = [[(question, f"{caption(anno['scene'])} {answer}")]]
        else:
            conversations = [[(question, answer)]]
            if self.captions and anno.get("scene"):
                conversations.append([(CAPTION_QUESTION, caption(anno["scene"]))])
        no_target = [0] if anno.get("kind") == "none" else []  # conversations whose answer is "There is no ..."
        if self.extra_requests and anno.get("scene"):
            # More requests about the same image: the image is encoded once for all of them.
            extra = self._more_requests(anno["scene"], rng)
            no_target += [len(conversations) + j for j, (*_, targets) in enumerate(extra) if not targets]
            conversations += [[(ask(t, sentence), a)] for t, sentence, a, _ in extra]
            more = [fill_polygon(anno["scene"][k]["points"], h, w) for *_, targets in extra for k in targets]
            masks = np.concatenate([masks, np.stack(more)]) if more else masks
        meta = {"kind": anno.get("kind"), "is_sentence": is_sentence, "no_target": no_target,
                "scene": anno.get("scene")}  # every shape: phrase samples (SAM 3's training) are made from it
        if self.answer_format == "grounding":
            prefix = f"{caption(anno['scene'])} " if self.describe_first and anno.get("scene") else ""
            from vlmsam.data.grounding_answers import grounding_answers

            conversations, masks, objects = grounding_answers(conversations, masks, self.frame(h, w), prefix)
            meta["box_objects"] = objects
        return Sample(self.image_path(i), conversations, masks, self.source, path.stem, meta)
