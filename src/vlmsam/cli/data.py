"""``vlmsam data ...``: dataset tools (``check`` a tree, ``synth`` write synthetic scenes)."""

from __future__ import annotations

import argparse

from vlmsam.cli.types import positive, seed, workers


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="dataset tools: check a dataset tree, write synthetic scenes", description="Dataset tools.")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    p = data_sub.add_parser(
        "check",
        help="list missing/unreadable images and broken annotations in a dataset tree",
        description="Walk a dataset tree (the layouts in the README) before an expensive run. Prints, per "
        "dataset and split, the number of samples, missing images, unreadable images and broken "
        "annotations, each with its path. Exit code 0 when everything is usable, 2 otherwise.",
    )
    p.add_argument("--dataset-dir", required=True, help="the folder that holds reason_seg/, refer_seg/, ade20k/, ...")
    p.add_argument("--datasets", help="families to check, e.g. reason_seg,refer_seg,sem_seg,vqa,seg_pp "
                   "(default: every family present; a named family that is absent is an error)")
    p.add_argument("--refer-seg-data", help="e.g. refcoco,refcoco+,refcocog,refclef")
    p.add_argument("--sem-seg-data", help="e.g. ade20k,cocostuff,mapillary,paco_lvis,pascal_part")
    p.add_argument("--vqa-data", help="LLaVA json names in llava_dataset/, e.g. llava_instruct_150k")
    p.add_argument("--seg-pp-data", help="e.g. caption,cot,conversation,instance_seg")
    p.add_argument("--workers", type=workers, default=4, help="threads decoding images and annotations (default 4)")
    p.add_argument("--on-bad-sample", choices=["skip", "error"], default="skip",
                   help="list and count every bad sample (default; evaluate, score and train skip the same ones) "
                   "or stop at the first, naming it")
    p.set_defaults(run=run_check_command)

    s = data_sub.add_parser(
        "synth",
        help="write synthetic reasoning scenes in the ReasonSeg layout",
        description="Write N synthetic scenes (shapes of several colours, sizes and textures with a request each: "
        "attribute, relation, superlative, uniqueness, several targets, or nothing matching) as "
        "OUT/reason_seg/ReasonSeg/{train,val,test}/X.jpg + X.json (80/10/10 %), readable by every ReasonSeg tool.",
    )
    s.add_argument("--out", required=True, help="dataset directory to write (use it as --dataset-dir)")
    s.add_argument("--n", type=positive, required=True, help="number of scenes")
    s.add_argument("--seed", type=seed, default=0, help="random seed (use a seed not used in training for a fresh test set)")
    s.add_argument("--phrasing", choices=("original", "rich", "heldout"), default="original",
                   help="how requests are worded: original (the generator's own templates; the bundled defaults "
                   "were trained on them), rich (many wordings, for training) or heldout (only wordings rich never "
                   "uses, for testing) (default: original)")
    s.set_defaults(run=run_synth_command)

    c = data_sub.add_parser(
        "convert-llava-plus",
        help="turn LLaVA-Plus tool-use conversations into <gsam> training conversations",
        description="Read LLaVA-Plus conversations (llava-plus-v1-117k-tool-merge.json) and keep, per entry, the question "
        "whose answer calls a segmentation tool, answered with <gsam>{caption}</gsam> (what the gsam segmenter acts on). "
        "Writes our conversation format (role user/assistant), readable by `vlmsam train` as VQA data.",
    )
    c.add_argument("input", help="LLaVA-Plus json")
    c.add_argument("output", help="json to write (e.g. DATASET_DIR/llava_dataset/llava_plus_gsam.json)")
    c.add_argument("--image-root", required=True, help="the folder the entries' images are relative to (e.g. coco/train2017)")
    c.set_defaults(run=run_convert_llava_plus)


def run_check_command(args: argparse.Namespace) -> int:
    from vlmsam.data.check import run_check
    from vlmsam.data.registry import split_list

    lists = {"refer_seg": args.refer_seg_data, "sem_seg": args.sem_seg_data, "vqa": args.vqa_data, "seg_pp": args.seg_pp_data}
    families = split_list(args.datasets) if args.datasets else None
    ok = run_check(args.dataset_dir, families, {k: v for k, v in lists.items() if v}, workers=args.workers,
                   on_bad_sample=args.on_bad_sample)
    return 0 if ok else 2


def run_synth_command(args: argparse.Namespace) -> int:
    from vlmsam.data.synth import write_synth
    from vlmsam.errors import VlmsamError

    if args.n < 1:
        raise VlmsamError("--n must be at least 1")
    from pathlib import Path

    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise VlmsamError(f"{args.out}: is a file; --out names the dataset directory to write")
    counts = write_synth(args.out, args.n, args.seed, phrasing=args.phrasing)
    print(f"wrote {sum(counts.values())} scenes to {args.out}/reason_seg/ReasonSeg ("
          + ", ".join(f"{k}: {v}" for k, v in counts.items()) + ")")
    return 0


def run_convert_llava_plus(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from vlmsam.data.llava_plus import convert_llava_plus
    from vlmsam.errors import VlmsamError
    from vlmsam.io.files import read_json
    from vlmsam.io.writer import atomic_write_bytes

    src, dst = Path(args.input), Path(args.output)
    if dst.is_dir():
        raise VlmsamError(f"{dst}: is a directory; name the json file to write")
    root = Path(args.image_root)
    if root.exists() and not root.is_dir():
        raise VlmsamError(f"{root}: is a file; --image-root names the COCO image folder")
    entries = read_json(src, "a LLaVA-Plus JSON list of conversations", list)
    converted, skipped = convert_llava_plus(entries, args.image_root)
    if entries and not converted:
        left = ", ".join(f"{v} {k}" for k, v in skipped.items() if v)
        raise VlmsamError(f"{src}: none of its {len(entries)} entries is a LLaVA-Plus conversation ({left}); nothing written")
    dst.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(dst, json.dumps(converted, ensure_ascii=False, indent=1).encode("utf-8"))
    left = ", ".join(f"{v} {k}" for k, v in skipped.items() if v) or "none"
    print(f"wrote {len(converted)} conversations to {dst} (left out: {left})")
    if not root.is_dir():  # converting before the images are downloaded is fine; training will need them
        print(f"note: {root} does not exist yet; the images are read from there when training")
    return 0
