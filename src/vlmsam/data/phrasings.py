"""Request wordings for synthetic scenes: families of templates per request kind (``phrasings.json``).

``vlmsam data synth --phrasing`` chooses the wordings: ``original`` (the generator's own two or three
templates per kind; the bundled defaults were trained on them), ``rich`` (every family not held out:
imperatives, instructions, questions, polite and context-setting sentences, terse phrases; synonyms,
casing and typos) or ``heldout``
(only the held-out families, which ``rich`` never uses: a test of wordings a model has not seen). A
wording never changes what a request means: the slots (the shape's name, the relation, the
superlative, the group) take synonyms, and typos touch only the template's own words.
"""

from __future__ import annotations

import functools
import json
import random
from pathlib import Path

from vlmsam.errors import DatasetError

PHRASINGS = ("original", "rich", "heldout")
TYPO_RATE = 0.1  # share of requests with two letters of one template word swapped
LOWER_RATE = 0.1  # share written all in lower case
SYNONYM_RATE = 0.3  # share of colour / shape words said another way ("violet disc" for "purple circle")


@functools.cache
def grammar() -> dict:
    return json.loads(Path(__file__).with_name("phrasings.json").read_text())


def families(phrasing: str) -> list[str]:
    """The template families ``phrasing`` draws from."""
    found = grammar()["families"]
    if phrasing not in ("rich", "heldout"):
        raise DatasetError(f"unknown phrasing '{phrasing}'; choose from {', '.join(PHRASINGS)}")
    return [name for name, family in found.items() if family["heldout"] == (phrasing == "heldout")]


def _said_another_way(word: str, rng: random.Random) -> str:
    """A colour or shape word (singular or plural) through one of its synonyms, in SYNONYM_RATE of draws."""
    synonyms = grammar()["synonyms"]
    plural = word.endswith("s") and word[:-1] in synonyms["shape"]
    stem = word[:-1] if plural else word
    others = (synonyms["colour"].get(stem) or synonyms["shape"].get(stem) or [stem])[1:]
    if not others or rng.random() >= SYNONYM_RATE:
        return word
    return rng.choice(others) + ("s" if plural else "")


def spellings(name: str) -> set[str]:
    """Every way the grammar may write a 'colour shape' name ('purple circle' -> 'violet disc', ...)."""
    synonyms = grammar()["synonyms"]
    colour, shape = name.split(" ")
    return {f"{c} {k}" for c in synonyms["colour"].get(colour, [colour]) for k in synonyms["shape"].get(shape, [shape])}


def _slots(fields: dict, rng: random.Random) -> dict:
    """The template's slots from the generator's fields, each through a synonym where one exists."""
    synonyms = grammar()["synonyms"]
    slots = dict(fields)
    for key in ("name", "group"):
        if key in fields:
            slots[key] = " ".join(_said_another_way(w, rng) for w in fields[key].split(" "))
    if "rel" in fields:
        slots["rel"] = rng.choice(synonyms["rel"][fields["rel"]])
    if "sup" in fields:
        word, _, noun = fields["sup"].partition(" ")
        slots["sup"] = f"{rng.choice(synonyms['sup'].get(word, [word]))} {_said_another_way(noun, rng)}"
    if "what" in fields:
        slots["what"] = rng.choice(synonyms["what"][fields["what"]])
    if "group" in fields:
        slots["each"] = slots["group"].removesuffix("es" if slots["group"].endswith("xes") else "s")
    return slots


def _typo(template: str, rng: random.Random) -> str:
    """Two neighbouring letters of one of the template's own words swapped (never a slot's word)."""
    words = template.split(" ")
    plain = [k for k, w in enumerate(words) if "{" not in w and w.isalpha() and len(w) >= 5]
    if not plain:
        return template
    k = rng.choice(plain)
    i = rng.randrange(len(words[k]) - 1)
    w = words[k]
    words[k] = w[:i] + w[i + 1] + w[i] + w[i + 2:]
    return " ".join(words)


def template(family: str, kind: str, rng: random.Random) -> str:
    """One template of ``family`` for ``kind``: drawn from its list, or composed from its parts (a verb and
    what the kind asks for, with an optional prefix and suffix: hundreds of wordings from a few lines)."""
    found = grammar()["families"][family]
    if "object" not in found:
        return rng.choice(found[kind])
    text = f"{rng.choice(found['prefix'])}{rng.choice(found['verb'])} {rng.choice(found['object'][kind])}{rng.choice(found['suffix'])}"
    return text[0].upper() + text[1:] if text[0].islower() and rng.random() < 0.5 else text


def word(kind: str, fields: dict, rng: random.Random, phrasing: str) -> tuple[str, str]:
    """``(request text, family)`` for one request of ``kind`` with the generator's ``fields``."""
    family = rng.choice(families(phrasing))
    drawn = template(family, kind, rng)
    if rng.random() < TYPO_RATE:
        drawn = _typo(drawn, rng)
    text = drawn.format(**_slots(fields, rng))
    return (text.lower() if rng.random() < LOWER_RATE else text), family


_CONSONANTS, _VOWELS = "bcdfghjklmnprstvwz", "aeiou"


@functools.cache
def _known_words() -> frozenset[str]:
    """Every word the grammar writes, held-out families included: a made-up word is none of them."""
    text = json.dumps(grammar()).lower()
    return frozenset("".join(c if c.isalpha() else " " for c in text).split())


@functools.cache
def _one_word_verbs() -> frozenset[str]:
    return frozenset(v for v in grammar()["families"]["composed"]["verb"] if " " not in v)


def made_up_word(rng: random.Random) -> str:
    """A pronounceable word no template or slot uses ('bolvet', 'zuka'): its tokens carry no meaning here."""
    while True:
        made = "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(rng.randint(1, 3)))
        made += rng.choice(_CONSONANTS) if rng.random() < 0.5 else ""
        # not the start of a known word ('redo' would be read as 'red'), nor one of them at its start ('noka': 'no')
        if not any(made.startswith(w[:3]) for w in _known_words() if len(w) >= 2):
            return made


def with_unknown_words(text: str, rng: random.Random) -> str:
    """``text`` with one or two made-up words put where a request's filler goes: at the start, at the end,
    in place of a leading verb or before an article. A training augmentation: words never seen in training
    (another user's verbs and pleasantries, spelt letter by letter by a small tokenizer) should not change
    what is segmented. The words naming the target are never touched, so the target set is the same."""
    words = text.split(" ")
    for _ in range(1 if rng.random() < 0.6 else 2):
        made = " ".join(made_up_word(rng) for _ in range(1 if rng.random() < 0.7 else 2))
        if words[0].lower() in _one_word_verbs() and rng.random() < 0.3:
            words[0] = made.capitalize() if words[0][0].isupper() else made
            continue
        spots = [0, len(words)] + [k for k, w in enumerate(words) if w.lower() in ("the", "a", "all", "every", "each")
                                   and (k == 0 or words[k - 1].lower() not in ("to", "on"))]  # not inside "to the left of"
        at = rng.choice(spots)
        if at == len(words) and words[-1].endswith((".", "?", "!")):  # before the closing punctuation
            words[-1], made = words[-1][:-1], f"{made}{words[-1][-1]}"
        elif at == 0 and words[0][:1].isupper():
            made, words[0] = made.capitalize(), (words[0] if words[0] == "I" else words[0].lower())
        words.insert(at, made)
    return " ".join(words)
