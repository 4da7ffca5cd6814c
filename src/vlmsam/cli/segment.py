"""``vlmsam segment`` (one or many images, one request or a requests file) and ``vlmsam chat``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from vlmsam.cli.types import tokens
from vlmsam.grounding.prompts import STYLES

MODEL_HELP = (
    "With no --model the bundled vlmsam-tiny is used. It was trained only on synthetic scenes of "
    "coloured shapes (circles, squares, triangles, stars, hexagons; see `vlmsam data synth`) and "
    "knows nothing else. For real images name real models: --model DIR (a checkpoint trained "
    "with `vlmsam train`; it records its design), or base models by hub id or path with --vlm Qwen/Qwen2.5-VL-7B-Instruct "
    "--sam facebook/sam-vit-huge (or --sam weights/sam_vit_h_4b8939.pth)."
)


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
    p.add_argument("--max-new-tokens", type=tokens, help="the generation limit of the answer (default: the design's)")
    p.add_argument("--style", choices=STYLES, help="how the grounding VLM is asked (box_prompt; default: the checkpoint's, "
                   "else qwen2_5_vl); seg_zero and vision_reasoner run those models' published inference")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="segment what a request asks for in one or many images",
                       description="Answer REQUEST about each IMAGE (paths, folders or globs) and draw one mask per "
                       "object the answer names; or answer each line of --requests FILE.jsonl "
                       '({"image": PATH, "request": TEXT}). Writes {stem}_mask_{i}.png, {stem}_masked_img_{i}.jpg, '
                       "{stem}_overlay.jpg and {stem}.json per answer, and predictions.jsonl (what `vlmsam score` "
                       "reads, a line added as each answer is written; --resume continues a stopped run) to --out. "
                       "An image that cannot be read or written is reported and skipped; the exit code is 1 when any "
                       "was. vlmsam never replaces or deletes a file in --out that it did not write "
                       "(.vlmsam-written.json lists those it did). " + MODEL_HELP,
                       epilog='example: vlmsam segment examples/scene.jpg "the shape left of the blue square"\n'
                       '         vlmsam segment "photos/*.jpg" "the dog" --out outputs/dogs')
    p.add_argument("inputs", nargs="*", metavar="IMAGE [IMAGE ...] REQUEST",
                   help="image paths, folders, globs or http(s) URLs, then the request (no request with --requests)")
    p.add_argument("--requests", help='a JSONL file of {"image": PATH, "request": TEXT} lines')
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=False,
                   help="keep the answers already in --out/predictions.jsonl (a run that was stopped) and compute "
                   "only the rest; without it predictions.jsonl starts anew (default: off)")
    _model_args(p)
    p.set_defaults(run=run_segment)

    c = sub.add_parser("chat", help="interactive: requests and images from the terminal (or a pipe)",
                       description="Asks for a request, then an image path or URL (Enter keeps the previous image, "
                       "which is then not encoded again); writes the outputs as `segment` does. An empty request "
                       "ends the session. " + MODEL_HELP)
    _model_args(c)
    c.set_defaults(run=run_chat)


def build_spec(args):
    """The typed build spec of the model flags (device resolved later, by the loader)."""
    from vlmsam.engine.spec import BuildSpec

    return BuildSpec(path=args.model or None, vlm=args.vlm, sam=args.sam, detector=args.detector,
                     vlm_endpoint=args.vlm_endpoint, max_new_tokens=args.max_new_tokens, style=args.style)


def design_of(args) -> str:
    """The design that will load, and a one-line error for a flag it does not take (before anything
    heavy): --segmenter, else what the --model checkpoint records, else the default design."""
    from vlmsam.engine import registry

    name = args.segmenter
    if name is None and args.model and os.path.isfile(Path(args.model) / registry.CONFIG_NAME):
        name = registry.model_type(Path(args.model))
    found = registry.design(name or registry.DEFAULT_DESIGN)
    found.check(build_spec(args))
    return found.name


def _load(args):
    from vlmsam.segmenter import load_segmenter

    design_of(args)
    return load_segmenter(args.model, args.segmenter, vlm=args.vlm, sam=args.sam, device=args.device, dtype=args.dtype,
                          max_new_tokens=args.max_new_tokens, vlm_endpoint=args.vlm_endpoint, detector=args.detector,
                          style=args.style)


def _report(result, written, elapsed: float) -> None:
    def printable(text: str, n: int) -> str:  # the VLM's words: no terminal escapes
        return "".join(c if c.isprintable() else "?" for c in text[:n])

    for step in result.info.get("trace", []):  # the agent design: one line per turn, then why it stopped
        call = f"{step['tool']} {json.dumps(step['parameters'])}" if step["tool"] else "malformed call"
        if step.get("thinking"):
            print(f"  turn {step['turn']} thinks: {printable(step['thinking'], 160)}")
        print(f"  turn {step['turn']}: {call} -> {printable(step['outcome'], 160)}")
    if "trace" in result.info:
        print(f"stopped: {result.info['reason']}")
    if "trace" in written:
        print(f"trace: {written['trace']}")
    print(f"answer: {result.text}")
    print(f"masks: {result.num_masks}    time: {elapsed:.2f} s")
    print(f"overlay: {written['overlay']}")


def run_segment(args: argparse.Namespace) -> int:
    from vlmsam.cli.batch import check_no_input_in, jobs_from_args, unique_stems
    from vlmsam.devices import resolve_device
    from vlmsam.io.writer import check_out_dir

    jobs = jobs_from_args(args.inputs, args.requests)
    check_out_dir(args.out)
    check_no_input_in(args.out, jobs)
    design_of(args)
    resolve_device(args.device)  # a bad device is reported before the model loads
    stems = unique_stems(jobs)
    if len(jobs) == 1 and not (args.requests or args.resume):
        return _segment_one(args, jobs[0], stems[0])
    return _segment_batch(args, jobs, stems)


def _segment_one(args, job: tuple[str, str], stem: str) -> int:
    """One image, one request: any error is the command's (one line, exit 2); no predictions.jsonl."""
    from vlmsam.io import load_image, write_result

    image = load_image(job[0])  # a bad image fails before the model loads
    seg = _load(args)
    t0 = time.perf_counter()
    result = seg.segment_many(seg.encode(image), [job[1]])[0]
    elapsed = time.perf_counter() - t0
    written = write_result(result, image, Path(args.out), stem, extra={"request": job[1], "model": seg.name})
    _report(result, written, elapsed)
    return 0


def _segment_batch(args, jobs: list[tuple[str, str]], stems: list[str]) -> int:
    """Every image in turn; an image that fails (load, encode, segment, write) is reported and skipped.
    Each answer goes to predictions.jsonl as it is written; --resume skips those already there."""
    from tqdm import tqdm

    from vlmsam.cli.batch import Journal, JournalError
    from vlmsam.errors import VlmsamError
    from vlmsam.io import load_image

    out = Path(args.out)
    journal = Journal(out, resume=args.resume)  # reads only: a user's own predictions.jsonl is refused here
    by_image: dict[str, list[int]] = {}
    for k, (image, request) in enumerate(jobs):
        if (stems[k], request) not in journal.done:
            by_image.setdefault(image, []).append(k)
    if len(jobs) == 1 and by_image:
        load_image(jobs[0][0])  # a bad image fails before the model loads
    seg = _load(args) if by_image else None
    journal.open()
    failed = 0
    try:
        for source, ks in tqdm(by_image.items(), desc="segment", unit="image", disable=len(jobs) == 1):
            try:
                _segment_image(seg, source, [(stems[k], jobs[k][1]) for k in ks], out, journal, report=len(jobs) == 1)
            except JournalError:
                raise
            except VlmsamError as exc:
                tqdm.write(f"skipped: {exc}", file=sys.stderr)  # on a line of its own, not after the bar
                failed += 1
        journal.finish([(stems[k], request) for k, (_, request) in enumerate(jobs)])
    finally:
        journal.close()
    kept = f"; {len(journal.done)} kept from an earlier run" if args.resume else ""
    print(f"{len(journal.new)} answer(s) for {len(by_image) - failed} image(s) written to {out} "
          f"(predictions.jsonl){kept}{f'; {failed} image(s) skipped' if failed else ''}")
    return 1 if failed else 0


def _segment_image(seg, source: str, items: list[tuple[str, str]], out: Path, journal, report: bool) -> None:
    """Answer ``items`` (``(stem, request)``) about the image ``source``, encoded once; write and journal each."""
    from vlmsam.cli.batch import image_stem
    from vlmsam.io import load_image, write_result
    from vlmsam.io.writer import mask_to_rle

    image = load_image(source)
    t0 = time.perf_counter()
    results = seg.segment_many(seg.encode(image), [request for _, request in items])
    elapsed = (time.perf_counter() - t0) / len(items)
    for (stem, request), result in zip(items, results):
        written = write_result(result, image, out, stem, extra={"request": request, "model": seg.name})
        journal.append({"image": image_stem(source), "stem": stem, "query": request, "answer": result.text,
                        "masks": [mask_to_rle(m) for m in result.masks]})
        if report:
            _report(result, written, elapsed)


def run_chat(args: argparse.Namespace) -> int:
    from vlmsam.devices import resolve_device
    from vlmsam.engine.contract import check_request
    from vlmsam.errors import VlmsamError
    from vlmsam.io import load_image, write_result

    design_of(args)
    resolve_device(args.device)
    seg = _load(args)
    print(f"model: {seg.name}")
    image = stem = None
    turn = 0
    history: list[tuple[str, str]] = []  # earlier turns about the current image, for designs that keep them
    keeps_history = seg.engine.capabilities.keeps_history
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
