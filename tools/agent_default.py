"""Teach the bundled tiny VLM to run the agent loop (the offline default of ``--segmenter agent``).

    python -m tools.agent_default train build/synth-rich build/runs/agent-tiny --steps 3000
    python -m tools.agent_default bundle build/runs/agent-tiny build/agent-tiny

``train``: teacher traces (``vlmsam.agent.traces``: the real loop, the bundled tiny SAM 3 as its tool, the
annotations choosing) for the training scenes, then every call of every trace is one example: its
context as the loop shows it and the teacher's reply, whose tokens alone are learnt. The whole tiny VLM
trains (it starts from vlmsam-tiny-grounding's, whose vision knows these scenes). A checkpoint every
``--save-every`` steps (model, optimiser, step); a stopped run resumes from the latest. ``log.jsonl``
holds the losses. ``bundle``: the final weights as an agent checkpoint that names the tiny SAM 3 beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch

from vlmsam.agent.traces import TINY_SYSTEM_PROMPT, scene_trace
from vlmsam.seg_vlm.losses import answer_weighted_ce
from vlmsam.vlm.messages import Message

WEIGHTS = Path(__file__).resolve().parent.parent / "src" / "vlmsam" / "weights"
BASE_VLM = WEIGHTS / "vlmsam-tiny-grounding" / "vlm"
SAM3 = WEIGHTS / "sam3-tiny" / "sam"
SCORE_THRESHOLD = 0.2  # below the phrase bundle's 0.4: the VLM chooses, so SAM 3's recall matters more than its precision
SETTINGS = {"max_turns": 6, "max_new_tokens": 96, "score_threshold": SCORE_THRESHOLD}


def examples(data: Path, split: str, n: int, sam) -> tuple[list, dict]:
    """(context, reply) pairs of the teacher traces of the first ``n`` scenes of ``split``, and their tally."""
    files = sorted((data / "reason_seg" / "ReasonSeg" / split).glob("*.json"))[:n]
    out, tally = [], {}
    for k, f in enumerate(files):
        trace = scene_trace(f, sam, score_threshold=SCORE_THRESHOLD)
        tally[trace.reason] = tally.get(trace.reason, 0) + 1
        out.extend(trace.calls)
        if (k + 1) % 500 == 0:
            print(f"traces {k + 1}/{len(files)}", flush=True)
    return out, tally


def encode(processor, context: list[Message], reply: str) -> dict:
    """Token ids, labels on the reply only, and the pictures' pixels, of one example."""
    images = {}

    def image_tokens(image):
        images[id(image)] = processor.image_inputs(image)
        return images[id(image)][2]

    head = processor.encode_messages(context, image_tokens, open_answer=True)[0]
    ids, _, labels, spans = processor.encode_messages([*context, Message("assistant", (reply,))], image_tokens,
                                                      open_answer=False)
    labels = [-100] * len(head) + labels[len(head):]
    pixels = [images[id(im)] for _, im in spans]
    return {"ids": torch.tensor(ids), "labels": torch.tensor(labels),
            "pixel_values": torch.cat([p[0] for p in pixels]), "grid": torch.cat([p[1] for p in pixels])}


def loss_of(model, processor, batch: list[dict]) -> torch.Tensor:
    width = max(len(b["ids"]) for b in batch)
    pad = processor.tokenizer.pad_token_id or 0
    ids = torch.full((len(batch), width), pad, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for r, b in enumerate(batch):
        ids[r, :len(b["ids"])], labels[r, :len(b["ids"])], mask[r, :len(b["ids"])] = b["ids"], b["labels"], 1
    out = model(input_ids=ids, attention_mask=mask, pixel_values=torch.cat([b["pixel_values"] for b in batch]),
                image_grid_thw=torch.cat([b["grid"] for b in batch]), mm_token_type_ids=processor.mm_token_type_ids(ids))
    return answer_weighted_ce(out.logits, labels, 1.0)  # the plain CE over the reply's tokens


def train(args) -> None:
    from vlmsam.sam import load_sam_backend
    from vlmsam.vlm.runtime import VlmRuntime

    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sam = load_sam_backend(str(SAM3), device="cpu")
    runtime = VlmRuntime.load(str(args.base), dtype="fp32", device="cpu")
    model, processor = runtime.model, runtime.processor
    pairs, tally = examples(Path(args.data), "train", args.scenes, sam)
    print(f"{len(pairs)} examples from {args.scenes} scenes; teacher endings {tally}", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    step, ckpt = 0, out / "checkpoint.pt"
    if ckpt.is_file():  # our own file, written below: weights and optimiser state only
        state = torch.load(ckpt, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step = int(state["step"])
        print(f"resumed at step {step}", flush=True)
    model.train()
    t0 = time.time()
    with open(out / "log.jsonl", "a") as log:
        while step < args.steps:
            lr = args.lr * 0.5 * (1 + math.cos(math.pi * step / args.steps)) * min(1.0, (step + 1) / 100)
            for g in opt.param_groups:
                g["lr"] = lr
            batch = [encode(processor, c, r) for c, r in random.Random(step).sample(pairs, args.batch)]  # pixels made per batch: memory
            loss = loss_of(model, processor, batch)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            log.write(json.dumps({"step": step, "loss": round(float(loss.detach()), 5), "lr": lr}) + "\n")
            if step % 50 == 0:
                log.flush()
                print(f"step {step}/{args.steps} loss {float(loss.detach()):.4f} ({(time.time() - t0) / 50:.2f} s/step)", flush=True)
                t0 = time.time()
            if step % args.save_every == 0 or step == args.steps:
                torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step}, ckpt.with_suffix(".tmp"))
                ckpt.with_suffix(".tmp").replace(ckpt)
    model.eval()
    runtime.save_pretrained(out / "vlm")
    (out / "train_config.json").write_text(json.dumps({**{k: v for k, v in vars(args).items() if k != "func"},
                                                       "sam": "sam3-tiny/sam", "teacher_endings": tally,
                                                       "examples": len(pairs)}, indent=2))


def ceiling(args) -> None:
    """The teacher's own gIoU on a split (what a VLM that chose perfectly would score with this SAM 3),
    each request scored as the evaluator scores it (the union of its masks against the union of the targets)."""
    from vlmsam.metrics.iou import intersection_union, pair_iou
    from vlmsam.sam import load_sam_backend

    sam = load_sam_backend(str(args.sam), device="cpu")
    per_kind: dict[str, list[float]] = {}
    for f in sorted((Path(args.data) / "reason_seg" / "ReasonSeg" / args.split).glob("*.json")):
        trace = scene_trace(f, sam, score_threshold=args.threshold)
        per_kind.setdefault(trace.kind, []).append(pair_iou(*intersection_union(trace.masks.any(0), trace.truth.any(0))))
    every = [v for vs in per_kind.values() for v in vs]
    print(json.dumps({"gIoU": round(sum(every) / len(every), 4), "n": len(every),
                      **{k: round(sum(v) / len(v), 4) for k, v in sorted(per_kind.items())}}))


def bundle(args) -> None:
    """An agent checkpoint: the trained VLM, the tiny SAM 3 named beside it, the short prompt it learnt."""
    import shutil

    run, out = Path(args.run), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copytree(run / "vlm", out / "vlm", dirs_exist_ok=True)
    shutil.copy(run / "train_config.json", out / "train_config.json")
    config = {"model_type": "vlmsam_agent", "vlm": "vlm", "sam": "../sam3-tiny/sam", **SETTINGS,
              "system_prompt": TINY_SYSTEM_PROMPT}
    (out / "vlmsam_config.json").write_text(json.dumps(config, indent=2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(required=True)
    t = sub.add_parser("train")
    t.add_argument("data")
    t.add_argument("out")
    t.add_argument("--scenes", type=int, default=6000)
    t.add_argument("--steps", type=int, default=3000)
    t.add_argument("--batch", type=int, default=8)
    t.add_argument("--lr", type=float, default=5e-4)
    t.add_argument("--save-every", type=int, default=250)
    t.add_argument("--base", default=str(BASE_VLM), help="the VLM to start from (default: vlmsam-tiny-grounding's; "
                   "weights/agent-tiny/vlm continues the bundled agent)")
    t.set_defaults(func=train)
    c = sub.add_parser("ceiling")
    c.add_argument("data")
    c.add_argument("--split", default="test")
    c.add_argument("--sam", default=SAM3, help="the SAM 3 the teacher calls (default: the bundled tiny one)")
    c.add_argument("--threshold", type=float, default=SCORE_THRESHOLD, help="keep candidates above this score")
    c.set_defaults(func=ceiling)
    b = sub.add_parser("bundle")
    b.add_argument("run")
    b.add_argument("out")
    b.set_defaults(func=bundle)
    args = p.parse_args()
    torch.set_num_threads(2)
    args.func(args)


if __name__ == "__main__":
    main()
