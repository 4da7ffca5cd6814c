"""The agent loop: the image encoded once and each turn's key/value cache reused, against re-encoding the
image and re-running the conversation at every turn.

A scripted 4-turn loop (three segment_phrase calls, then select_masks_and_return) on one 640 x 480
image. The VLM has real Qwen2.5-VL-3B layer shapes (``benchmarks/realsize.py``; ``--text-layers`` and
``--vision-layers`` of them, random weights: speed does not depend on their values) and generates
``--reply-tokens`` tokens per turn, after which the scripted call stands in for its words. SAM 3 has
real shapes (transformers' ``Sam3Config()``: ViT 1024 wide, 32 layers, 1008 x 1008; ``--vit-layers``
lowers the depth for a quick look).

* reused (vlmsam): SAM 3's ViT runs once per image, the VLM's vision tower once per picture, and each turn
  feeds the language model only what is new since the last (``LocalConversation``).
* re-run: every segment_phrase encodes the image for SAM 3 anew (``Sam3Processor.set_image`` per call, as
  Meta's agent does through its SAM service), and every turn encodes every picture and runs the whole
  conversation from its first token.

It also prints each part: SAM 3 (its ViT and the concept head per phrase) and the VLM (vision tower,
prefill, decoding). Why the target of 3 is out of reach for this loop: the speed-up (re-run time over
reused time) is the mean of the parts' ratios weighted by their shares of the reused time, and no part
reaches 3. SAM 3: three phrases are three ViT passes against one, with each phrase's detector pass in both
(its encoder fuses the phrase with the image), so 3(E + H) / (E + 3H) < 3. The VLM: about the ratio of the
work run, each picture and token once in the reused path against once per turn it is in for the re-run
(printed as tokens run; 2.4 here: it nears the number of turns only when the first turn holds nearly all
the tokens), with the tokens it writes the same in both. The rest (drawing, parsing) is the same in both.

Last line: ``agent_reuse_speedup=<ratio>`` (re-run time over reused time).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: its sibling modules
from bench_sam3_phrases import build as build_sam3  # noqa: E402
from realsize import save_vlm  # noqa: E402

from vlmsam.agent.loop import AgentLoop  # noqa: E402

PHRASES = ["knife", "bread", "cutting board"]


def scripted(phrases: list[str]) -> list[str]:
    calls = [{"name": "segment_phrase", "parameters": {"text_prompt": p}} for p in phrases]
    calls.append({"name": "select_masks_and_return", "parameters": {"final_answer_masks": [1]}})
    return [f"<think>step {k}</think><tool>{json.dumps(c)}</tool>" for k, c in enumerate(calls)]


class Scripted:
    """A local conversation that does the real work of each turn (prefill and ``reply_tokens`` of greedy
    decoding) and then answers the scripted call instead of the random model's words."""

    def __init__(self, conversation, replies: list[str], reply_tokens: int, clock: dict):
        self.conversation, self.replies, self.reply_tokens, self.turn = conversation, replies, reply_tokens, 0
        self.clock = clock

    def reply(self, messages, *, max_new_tokens=0, thread="main") -> str:
        t0 = time.perf_counter()
        self.conversation.reply(messages, max_new_tokens=self.reply_tokens, thread=thread)
        self.clock["vlm"] += time.perf_counter() - t0
        self.turn += 1
        return self.replies[self.turn - 1]


class Timed:
    """SAM 3 as the loop's tool, its time counted; ``reencode`` encodes the image again for every phrase
    (the re-run baseline)."""

    def __init__(self, sam, image, clock: dict, reencode: bool):
        self.sam, self.image, self.clock, self.reencode = sam, image, clock, reencode

    def segment_phrase(self, embedding, phrase, **kwargs):
        t0 = time.perf_counter()
        found = self.sam.segment_phrase(self.sam.encode(self.image) if self.reencode else embedding, phrase, **kwargs)
        self.clock["sam3"] += time.perf_counter() - t0
        return found


def build_vlm(root: Path, text_layers: int, vision_layers: int):
    from vlmsam.vlm.runtime import VlmRuntime

    torch.manual_seed(0)
    return VlmRuntime.load(str(save_vlm(root / "vlm", text_layers, vision_layers, torch.float32)), dtype="fp32", device="cpu")


def run_loop(vlm, sam, image, reuse: bool, reply_tokens: int) -> tuple[float, int, dict]:
    """Seconds for one request (encoding included), the turns it took and the seconds of each part."""
    clock = {"sam3": 0.0, "vlm": 0.0}
    t0 = time.perf_counter()
    prefix = vlm.encode_image(image, cache=False) if reuse else None  # what the agent design encodes
    t1 = time.perf_counter()
    embedding = sam.encode(image) if reuse else None
    clock["vlm"], clock["sam3"] = t1 - t0, time.perf_counter() - t1
    talk = Scripted(vlm.conversation(prefix, image, reuse=reuse), scripted(PHRASES), reply_tokens, clock)
    out = AgentLoop(talk, Timed(sam, image, clock, not reuse), embedding, image, "what would you use to cut the bread?",
                    max_turns=8, score_threshold=0.0).run()  # random weights score low: keep candidates to draw
    return time.perf_counter() - t0, out.turns, clock | {"fed": talk.conversation.fed_tokens}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--text-layers", type=int, default=4)
    p.add_argument("--vision-layers", type=int, default=4)
    p.add_argument("--vit-layers", type=int, default=32)
    p.add_argument("--reply-tokens", type=int, default=48)
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    image = Image.fromarray((np.random.default_rng(0).random((480, 640, 3)) * 255).astype(np.uint8))
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        vlm = build_vlm(Path(tmp), args.text_layers, args.vision_layers)
        sam = build_sam3(args.vit_layers)
        run_loop(vlm, sam, image.resize((64, 48)), True, 2)  # warm-up
        reused, turns, a = run_loop(vlm, sam, image, True, args.reply_tokens)
        rerun, turns_rerun, b = run_loop(vlm, sam, image, False, args.reply_tokens)
    assert turns == turns_rerun == len(PHRASES) + 1, (turns, turns_rerun)
    print(f"turns per request: {turns}; VLM: Qwen2.5-VL-3B shapes, {args.text_layers} text / {args.vision_layers} vision layers; "
          f"SAM 3 ViT {args.vit_layers} layers")
    for part, bound in (("sam3", f"at most {len(PHRASES)}: one ViT pass against one per phrase"),
                        ("vlm", f"tokens run {a['fed']} against {b['fed']}, up to {turns * args.reply_tokens} of them generated, in both")):
        print(f"  {part}: reused {a[part]:.2f} s, re-run {b[part]:.2f} s, ratio {b[part] / a[part]:.2f} ({bound})")
    print(f"reused (image encoded once, KV cache carried): {reused:.2f} s")
    print(f"re-run (image re-encoded, conversation re-run every turn): {rerun:.2f} s")
    print(f"agent_reuse_speedup={rerun / reused:.2f}")


if __name__ == "__main__":
    main()
