"""``vlmsam segment`` (one image, one request) and ``vlmsam chat`` (the interactive loop)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

MODEL_HELP = (
    "With no --model the bundled vlmsam-tiny is used. It was trained only on synthetic scenes of "
    "coloured shapes (circles, squares, triangles, stars, hexagons; see `vlmsam data synth`) and "
    "knows nothing else. For real images name real models: --model DIR (a [SEG] checkpoint trained "
    "with `vlmsam train`), or base models by hub id or path with --vlm Qwen/Qwen2.5-VL-7B-Instruct "
    "--sam facebook/sam-vit-huge (or --sam weights/sam_vit_h_4b8939.pth)."
)


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="a trained [SEG] checkpoint directory (default: the bundled vlmsam-tiny)")
    from vlmsam.segmenter import SEGMENTERS

    p.add_argument("--segmenter", default="seg_token", choices=SEGMENTERS, help="which segmenter (default seg_token)")
    p.add_argument("--vlm", help="base VLM by hub id or path (instead of --model)")
    p.add_argument("--sam", help="base SAM by hub id, transformers directory or Meta .pth (with --vlm)")
    p.add_argument("--out", default="outputs", help="output directory (default: outputs)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0 (default: cpu)")
    p.add_argument("--max-new-tokens", type=int, default=128)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="segment what a request asks for in an image",
                       description="Answer REQUEST about IMAGE and draw one mask per object the answer names. "
                       "Writes {stem}_mask_{i}.png, {stem}_masked_img_{i}.jpg, {stem}_overlay.jpg and {stem}.json "
                       "to --out. " + MODEL_HELP,
                       epilog='example: vlmsam segment examples/scene.jpg "the shape left of the blue square"')
    p.add_argument("image", help="image path or http(s) URL")
    p.add_argument("request", help='what to segment, e.g. "the largest triangle"')
    _model_args(p)
    p.set_defaults(run=run_segment)

    c = sub.add_parser("chat", help="interactive: requests and images from the terminal (or a pipe)",
                       description="Asks for a request, then an image path or URL (Enter keeps the previous image, "
                       "which is then not encoded again); writes the outputs as `segment` does. An empty request "
                       "ends the session. " + MODEL_HELP)
    _model_args(c)
    c.set_defaults(run=run_chat)


def _load(args):
    from vlmsam.segmenter import load_segmenter

    return load_segmenter(args.model, args.segmenter, vlm=args.vlm, sam=args.sam, device=args.device,
                          max_new_tokens=args.max_new_tokens)


def _answer(seg, image, request: str, out: Path, stem: str) -> None:
    from vlmsam.io import write_result

    t0 = time.perf_counter()
    result = seg.segment(request)
    elapsed = time.perf_counter() - t0
    written = write_result(result, image, out, stem, extra={"request": request, "model": seg.name})
    # [SEG] is a special token and hidden from the text: "[SEG]." alone reads as "."
    print(f"answer: {result.text if any(c.isalnum() for c in result.text) else '(a mask; no words)'}")
    print(f"masks: {result.num_masks}    time: {elapsed:.2f} s")
    print(f"overlay: {written['overlay']}")


def run_segment(args: argparse.Namespace) -> int:
    from vlmsam.io import load_image
    from vlmsam.segmenter import check_request

    check_request(args.request)
    image = load_image(args.image)  # a bad image fails before the model loads
    seg = _load(args)
    seg.set_image(image)
    _answer(seg, image, args.request, Path(args.out), Path(str(args.image)).stem or "image")
    return 0


def run_chat(args: argparse.Namespace) -> int:
    from vlmsam.errors import VlmsamError
    from vlmsam.io import load_image

    seg = _load(args)
    print(f"model: {seg.name}")
    image = stem = None
    turn = 0
    while True:
        request = _ask("Please input your prompt (or press Enter to exit): ")
        if request is None or not request.strip():
            return 0
        source = _ask("Please input the image path or URL: ")
        if source is None:
            return 0
        try:
            if source.strip():
                image = load_image(source.strip())
                stem = Path(source.strip()).stem or "image"
                seg.set_image(image)  # the same pixels are not encoded twice
            elif image is None:
                print("error: no image yet; give an image path or URL", file=sys.stderr)
                continue
            turn += 1
            _answer(seg, image, request, Path(args.out), f"{stem}_{turn}")
        except VlmsamError as exc:  # a bad image or request ends that turn, not the session
            print(f"error: {exc}", file=sys.stderr)


def _ask(prompt: str) -> str | None:
    print(prompt, end="", flush=True)
    line = sys.stdin.readline()
    if not line:  # end of input (a closed pipe)
        print()
        return None
    return line.rstrip("\n")
