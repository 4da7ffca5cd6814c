"""``vlmsam proposals``: SAM's automatic masks for every image of the named datasets, once.

Images are split across torchrun ranks (image i goes to rank i mod world size); each rank writes
shards of ``shard_size`` images (see :mod:`vlmsam.proposals.store`). A run skips every image already
in a complete shard, whichever rank wrote it, so a killed run resumes where it stopped; a truncated
or corrupt shard is reported with its path, removed and recomputed.
"""

from __future__ import annotations

import re
from pathlib import Path

from tqdm import tqdm

from vlmsam.errors import VlmsamError
from vlmsam.proposals.store import verify_shard, write_shard


def dataset_images(dataset_dir: str | Path, datasets: str) -> list[tuple[str, Path]]:
    """``(key, path)`` of every image of the named splits (``reason_seg:train``, ``refcoco|unc|val``, ...),
    keys relative to ``dataset_dir``, sorted, each image once."""
    from vlmsam.data.registry import build_eval_dataset, split_list

    root = Path(dataset_dir)
    found = {}
    for spec in split_list(datasets):
        ds = build_eval_dataset(spec, root)
        for i in range(len(ds)):
            path = Path(ds.image_path(i))
            try:
                key = str(path.relative_to(root))
            except ValueError:
                key = str(path)
            found[key] = path
    if not found:
        raise VlmsamError(f"no images in {datasets} under {root}")
    return sorted(found.items())


def prepare_shards(shards_dir: Path, print_fn=print) -> set[str]:
    """Remove corrupt shards (saying which and why); return the images of the complete ones."""
    done: set[str] = set()
    for index in sorted(shards_dir.glob("*.index.json")):
        lines, problem = verify_shard(index)
        if problem:
            shard = index.with_name(index.name.replace(".index.json", ".jsonl"))
            print_fn(f"{shard}: {problem}; recomputing its images")
            shard.unlink(missing_ok=True)
            index.unlink(missing_ok=True)
            continue
        done.update(line[0] for line in lines)
    for tmp in shards_dir.glob(".*.tmp"):  # a write a kill interrupted
        tmp.unlink(missing_ok=True)
    return done


def run_proposals(dataset_dir, datasets: str, out: str | Path, sam, amg_config, *, shard_size: int = 16,
                  max_side: int = 1024, progress: bool = True, print_fn=print) -> dict:
    from vlmsam.io.images import load_image
    from vlmsam.sam.amg import AutomaticMaskGenerator
    from vlmsam.distributed import barrier, gather_objects, init_distributed

    info = init_distributed()
    images = dataset_images(dataset_dir, datasets)
    shards_dir = Path(out) / "shards"
    if info.is_main:
        shards_dir.mkdir(parents=True, exist_ok=True)
        prepare_shards(shards_dir, print_fn)
    barrier()
    done = {line for index in shards_dir.glob("*.index.json") for line in (e[0] for e in verify_shard(index)[0])}
    mine = [(k, p) for i, (k, p) in enumerate(images) if i % info.world_size == info.rank and k not in done]
    numbers = [int(m.group(1)) for f in shards_dir.glob(f"r{info.rank}-*.jsonl")
               if (m := re.match(rf"r{info.rank}-(\d+)\.jsonl$", f.name))]
    n = max(numbers, default=-1) + 1
    amg = AutomaticMaskGenerator(sam, amg_config)
    buffer, written, bad = [], 0, []
    for key, path in tqdm(mine, desc=f"proposals (rank {info.rank})", unit="image", disable=not progress):
        try:
            image = load_image(path)
        except VlmsamError as exc:
            bad.append(str(exc))
            continue
        source = (image.height, image.width)
        scale = max_side / max(source)
        if scale < 1:
            image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
        proposals = sorted(amg.generate(image), key=lambda p: -p.area)
        buffer.append({"image": key, "size": [image.height, image.width], "source_size": list(source),
                       "proposals": [{k: v for k, v in p.to_dict().items() if k != "crop_box"} for p in proposals]})
        if len(buffer) == shard_size:
            write_shard(shards_dir, f"r{info.rank}-{n:06d}", buffer)
            written, n, buffer = written + len(buffer), n + 1, []
    if buffer:
        write_shard(shards_dir, f"r{info.rank}-{n:06d}", buffer)
        written += len(buffer)
    counts = gather_objects({"written": written, "bad": bad})
    summary = {"images": len(images), "already_done": len(done), "computed": sum(c["written"] for c in counts),
               "unreadable": [b for c in counts for b in c["bad"]]}
    if info.is_main:
        print_fn(f"{summary['computed']} image(s) computed, {summary['already_done']} already done, "
                 f"{len(summary['unreadable'])} unreadable, of {summary['images']}; proposals in {shards_dir}")
        for line in summary["unreadable"][:20]:
            print_fn(f"  unreadable: {line}")
    return summary
