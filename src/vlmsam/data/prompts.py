"""Every question and answer template, in one place, for training and inference alike.

The templates are LISA's (the ones every reasoning-segmentation paper trains and evaluates with).
None of them carries an image placeholder: the processor puts the vision tokens in front of the
first user turn itself, so a literal ``<image>`` never reaches a Qwen prompt.
"""

from __future__ import annotations

import random

SEG = "[SEG]"

SHORT_QUESTIONS = [
    "Can you segment the {class_name} in this image?",
    "Please segment the {class_name} in this image.",
    "What is {class_name} in this image? Please respond with segmentation mask.",
    "What is {class_name} in this image? Please output segmentation mask.",
]
LONG_QUESTIONS = [
    "{sent} Please respond with segmentation mask.",
    "{sent} Please output segmentation mask.",
]
EXPLANATORY_QUESTIONS = [
    "Please output segmentation mask and explain why.",
    "Please output segmentation mask and explain the reason.",
    "Please output segmentation mask and give some explanation.",
]
ANSWERS = [
    "It is [SEG].",
    "Sure, [SEG].",
    "Sure, it is [SEG].",
    "Sure, the segmentation result is [SEG].",
    "[SEG].",
]
MULTI_QUESTION = "Can you segment {names} separately in this image?"
MULTI_ANSWER = "Sure, they are {segs}."

EVAL_LONG = "{text} Please output segmentation mask."
EVAL_SHORT = "What is {text} in this image? Please output segmentation mask."
EVAL_ANSWER = "[SEG]."

# How many classes one question asks about, and how often (for the multi-class questions).
GROUP_SIZES = (1, 2, 3)
GROUP_PROBS = (0.4, 0.3, 0.3)

# LLaVA marks the image in the text; our processor places the vision tokens itself.
IMAGE_PLACEHOLDER = "<image>"


def english_list(items: list[str]) -> str:
    """``a`` / ``a and b`` / ``a, b, and c``."""
    if len(items) <= 2:
        return " and ".join(items)
    return ", ".join(items[:-1]) + ", and " + items[-1]


def short_question(name: str, rng: random.Random) -> str:
    return rng.choice(SHORT_QUESTIONS).format(class_name=name.lower())


def long_question(sentence: str, rng: random.Random) -> str:
    return rng.choice(LONG_QUESTIONS).format(sent=sentence)


def question(text: str, is_sentence: bool, rng: random.Random) -> str:
    return long_question(text, rng) if is_sentence else short_question(text, rng)


def answer(rng: random.Random) -> str:
    return rng.choice(ANSWERS)


def multi_question(names: list[str]) -> str:
    return MULTI_QUESTION.format(names=english_list([n.lower() for n in names]))


def multi_answer(n: int) -> str:
    return MULTI_ANSWER.format(segs=english_list([SEG] * n))


def group_sizes(n: int, rng: random.Random) -> list[int]:
    """Split ``n`` targets into questions of 1, 2 or 3 classes (probabilities 0.4 / 0.3 / 0.3).

    A drawn size larger than what is left is cut to what is left, so the sizes always sum to ``n``.
    """
    sizes = []
    while n > 0:
        k = min(rng.choices(GROUP_SIZES, weights=GROUP_PROBS)[0], n)
        sizes.append(k)
        n -= k
    return sizes


def class_conversations(names: list[str], rng: random.Random) -> list[list[tuple[str, str]]]:
    """One conversation per group of class names: a single name gets a short question and one of
    the answers; a group gets the multi-class question and one ``[SEG]`` per name, in order."""
    conversations = []
    start = 0
    for k in group_sizes(len(names), rng):
        group = names[start : start + k]
        start += k
        if k == 1:
            conversations.append([(short_question(group[0], rng), answer(rng))])
        else:
            conversations.append([(multi_question(group), multi_answer(k))])
    return conversations


def eval_question(text: str, is_sentence: bool) -> str:
    """The fixed evaluation prompt (no randomness: every system is asked the same thing)."""
    return (EVAL_LONG if is_sentence else EVAL_SHORT).format(text=text)


def strip_image_placeholder(text: str) -> str:
    """LLaVA's ``<image>\\n`` (before or after the question) removed."""
    return text.replace(IMAGE_PLACEHOLDER + "\n", "").replace("\n" + IMAGE_PLACEHOLDER, "").replace(IMAGE_PLACEHOLDER, "").strip()
