"""``vlmsam segment`` (one or many images, one request or a requests file) and ``vlmsam chat``."""

from __future__ import annotations

import argparse
import glob
import json
import sys
import time
from pathlib import Path

from vlmsam.cli.types import tokens

MODEL_HELP = (
    "With no --model the bundled vlmsam-tiny is used. It was trained only on synthetic scenes of "
    "coloured shapes (circles, squares, triangles, stars, hexagons; see `vlmsam data synth`) and "
    "knows nothing else. For real images name real models: --model DIR (a checkpoint trained "
    "with `vlmsam train`; it records its design), or base models by hub id or path with --vlm Qwen/Qwen2.5-VL-7B-Instruct "
    "--sam facebook/sam-vit-huge (or --sam weights/sam_vit_h_4b8939.pth)."
)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="a trained checkpoint directory (default: the bundled vlmsam-tiny)")
    from vlmsam.segmenter import SEGMENTERS

    p.add_argument("--segmenter", choices=SEGMENTERS, help="which design (a checkpoint names its own; needed only with --vlm/--sam)")
    p.add_argument("--vlm", help="base VLM by hub id or path (instead of --model); with --vlm-endpoint the served model's name")
    p.add_argument("--vlm-endpoint", metavar="URL", help="an OpenAI-compatible server (vLLM, SGLang, TGI) as the VLM, "
                   "e.g. http://127.0.0.1:8000/v1 (box_prompt)")
    p.add_argument("--sam", help="base SAM by hub id, transformers directory or Meta .pth (with --vlm)")
    p.add_argument("--detector", help="Grounding DINO by hub id or path, e.g. IDEA-Research/grounding-dino-tiny (gsam, grounded)")
    p.add_argument("--out", default="outputs", help="output directory (default: outputs)")
    p.add_argument("--device", default="auto", help="auto (CUDA where available), cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], help="model dtype (default: as saved)")
    p.add_argument("--max-new-tokens", type=tokens, default=128)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="segment what a request asks for in one or many images",
                       description="Answer REQUEST about each IMAGE (paths, folders or globs) and draw one mask per "
                       "object the answer names; or answer each line of --requests FILE.jsonl "
                       '({"image": PATH, "request": TEXT}). Writes {stem}_mask_{i}.png, {stem}_masked_img_{i}.jpg, '
                       "{stem}_overlay.jpg and {stem}.json per answer, and predictions.jsonl (what `vlmsam score` "
                       "reads) to --out. An unreadable image is reported and skipped; the exit code is 1 when any "
                       "was. " + MODEL_HELP,
                       epilog='example: vlmsam segment examples/scene.jpg "the shape left of the blue square"\n'
                       '         vlmsam segment "photos/*.jpg" "the dog" --out outputs/dogs')
    p.add_argument("inputs", nargs="*", metavar="IMAGE [IMAGE ...] REQUEST",
                   help="image paths, folders, globs or http(s) URLs, then the request (no request with --requests)")
    p.add_argument("--requests", help='a JSONL file of {"image": PATH, "request": TEXT} lines')
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
                          dtype=args.dtype, max_new_tokens=args.max_new_tokens, vlm_endpoint=args.vlm_endpoint,
                          detector=args.detector)


def _expand(source: str) -> list[str]:
    """A path, folder (its images, sorted), glob or URL -> image sources."""
    from vlmsam.io.images import is_url

    if is_url(source):
        return [source]
    path = Path(source)
    if path.is_dir():
        return sorted(str(p) for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if any(ch in source for ch in "*?["):
        return sorted(glob.glob(source))
    return [source]


def _jobs(args) -> list[tuple[str, str]]:
    """``(image source, request)`` pairs, in order, grouped later by image."""
    from vlmsam.engine.contract import check_request
    from vlmsam.errors import VlmsamError

    if args.requests:
        if args.inputs:
            raise VlmsamError("give either IMAGE ... REQUEST or --requests FILE.jsonl, not both")
        path = Path(args.requests)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise VlmsamError(f"{path}: unreadable requests file ({type(exc).__name__})") from None
        jobs = []
        for k, text in enumerate(lines, 1):
            if not text.strip():
                continue
            try:
                line = json.loads(text)
                image, request = line["image"], line["request"]
                if not isinstance(image, str) or not isinstance(request, str):
                    raise TypeError("image and request must be strings")
            except (ValueError, KeyError, TypeError) as exc:
                raise VlmsamError(f'{path}:{k}: expected {{"image": PATH, "request": TEXT}} ({type(exc).__name__}: {exc})') from None
            jobs.append((image, check_request(request)))
        if not jobs:
            raise VlmsamError(f"{path}: no requests in it")
        return jobs
    if len(args.inputs) < 2:
        raise VlmsamError("give at least one IMAGE and a REQUEST (or --requests FILE.jsonl)")
    *sources, request = args.inputs
    request = check_request(request)
    images = [image for s in sources for image in _expand(s)]
    if not images:
        raise VlmsamError(f"no images found in {', '.join(sources)}")
    return [(image, request) for image in images]


def _stems(jobs: list[tuple[str, str]]) -> list[str]:
    """One output stem per answer: the image's stem, made unique (two requests about one image, or
    two images with one name in different folders, never overwrite each other)."""
    seen: dict[str, int] = {}
    out = []
    for image, _ in jobs:
        stem = Path(image.split("?")[0]).stem or "image"
        seen[stem] = seen.get(stem, 0) + 1
        out.append(stem if seen[stem] == 1 else f"{stem}_{seen[stem]}")
    return out


def _report(result, written, elapsed: float) -> None:
    print(f"answer: {result.text}")
    print(f"masks: {result.num_masks}    time: {elapsed:.2f} s")
    print(f"overlay: {written['overlay']}")


def run_segment(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from vlmsam.devices import resolve_device
    from vlmsam.errors import VlmsamError
    from vlmsam.io import load_image, write_result
    from vlmsam.io.writer import atomic_write_bytes, mask_to_rle

    from vlmsam.io.writer import check_out_dir

    jobs = _jobs(args)
    check_out_dir(args.out)
    resolve_device(args.device)  # a bad device is reported before the model loads
    stems = _stems(jobs)
    by_image: dict[str, list[int]] = {}
    for k, (image, _) in enumerate(jobs):
        by_image.setdefault(image, []).append(k)
    single = len(jobs) == 1
    if single:  # a bad image fails before the model loads
        load_image(jobs[0][0])
    seg = _load(args)
    out = Path(args.out)
    predictions, failed = {}, 0
    for image_source, ks in tqdm(by_image.items(), desc="segment", unit="image", disable=single):
        try:
            image = load_image(image_source)
        except VlmsamError as exc:
            print(f"skipped: {exc}", file=sys.stderr)
            failed += 1
            continue
        t0 = time.perf_counter()
        encoded = seg.encode(image)
        results = seg.segment_many(encoded, [jobs[k][1] for k in ks])
        elapsed = (time.perf_counter() - t0) / len(ks)
        for k, result in zip(ks, results):
            written = write_result(result, image, out, stems[k], extra={"request": jobs[k][1], "model": seg.name})
            predictions[k] = {"image": Path(image_source.split("?")[0]).stem, "query": jobs[k][1], "answer": result.text,
                              "masks": [mask_to_rle(m) for m in result.masks]}
            if single:
                _report(result, written, elapsed)
    if not single or args.requests:
        atomic_write_bytes(out / "predictions.jsonl", "".join(json.dumps(predictions[k]) + "\n" for k in sorted(predictions)).encode())
        print(f"{len(predictions)} answer(s) for {len(by_image) - failed} image(s) written to {out} "
              f"(predictions.jsonl){f'; {failed} image(s) skipped' if failed else ''}")
    return 1 if failed else 0


def run_chat(args: argparse.Namespace) -> int:
    from vlmsam.devices import resolve_device
    from vlmsam.engine.contract import check_request
    from vlmsam.errors import VlmsamError
    from vlmsam.io import load_image, write_result

    resolve_device(args.device)
    seg = _load(args)
    print(f"model: {seg.name}")
    image = stem = None
    turn = 0
    history: list[tuple[str, str]] = []  # earlier turns about the current image, for designs that keep them
    keeps_history = getattr(seg.engine, "keeps_history", False)
    while True:
        request = _ask("Please input your prompt (or press Enter to exit): ")
        if request is None or not request.strip():
            return 0
        try:
            check_request(request)  # before the image is asked for and encoded
        except VlmsamError as exc:
            print(f"error: {exc}", file=sys.stderr)
            continue
        source = _ask("Please input the image path or URL: ")
        if source is None:
            return 0
        try:
            if source.strip():
                image = load_image(source.strip())
                stem = Path(source.strip()).stem or "image"
                before = seg.current
                seg.set_image(image)  # the same pixels are not encoded twice
                if seg.current is not before:
                    history = []  # a new image starts a new conversation
            elif image is None:
                print("error: no image yet; give an image path or URL", file=sys.stderr)
                continue
            turn += 1
            t0 = time.perf_counter()
            result = seg.segment(request, history=history) if keeps_history else seg.segment(request)
            if keeps_history:
                history.append((request, result.text))
            written = write_result(result, image, Path(args.out), f"{stem}_{turn}", extra={"request": request, "model": seg.name})
            _report(result, written, time.perf_counter() - t0)
        except VlmsamError as exc:  # a bad image or request ends that turn, not the session
            print(f"error: {exc}", file=sys.stderr)


def _ask(prompt: str) -> str | None:
    print(prompt, end="", flush=True)
    line = sys.stdin.readline()
    if not line:  # end of input (a closed pipe)
        print()
        return None
    return line.rstrip("\n")
