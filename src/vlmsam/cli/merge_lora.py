"""``vlmsam merge-lora``: fold a [SEG] checkpoint's LoRA into its base weights."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "merge-lora",
        help="write a standalone [SEG] model with LoRA merged into the base weights",
        description="Load a [SEG] checkpoint (config, LoRA adapter, trainable weights), merge the "
        "LoRA into the language model and save a checkpoint that loads without peft: the merged "
        "VLM under OUT_DIR/vlm, SAM under OUT_DIR/sam. OUT_DIR must be new or empty, and neither "
        "inside the checkpoint nor holding it; the checkpoint is never changed.",
    )
    p.add_argument("checkpoint", help="a [SEG] checkpoint directory (from training or save_pretrained)")
    p.add_argument("out_dir", help="where to write the merged checkpoint (a new or empty directory)")
    p.set_defaults(run=run_merge)


def check_merge(checkpoint: str, out_dir: str) -> tuple[Path, Path]:
    """The checkpoint and output directories, or a one-line :class:`CheckpointError`: no checkpoint,
    not a [SEG] checkpoint, no LoRA to merge, or an output that would overwrite or mix with it."""
    from vlmsam.errors import CheckpointError
    from vlmsam.io.files import read_json

    ckpt, out = Path(checkpoint), Path(out_dir)
    if not os.path.isdir(ckpt):
        raise CheckpointError(f"{ckpt}: no such checkpoint directory")
    if not os.path.isfile(ckpt / "vlmsam_config.json"):
        raise CheckpointError(f"{ckpt}: not a vlmsam [SEG] checkpoint (no vlmsam_config.json)")
    config = read_json(ckpt / "vlmsam_config.json", "a vlmsam checkpoint config", dict)
    design = str(config.get("model_type", "seg_token")).removeprefix("vlmsam_")
    if design != "seg_token":
        raise CheckpointError(f"{ckpt}: a {design} checkpoint; merge-lora merges [SEG] (seg_token) checkpoints")
    if not config.get("use_lora", True):
        raise CheckpointError(f"{ckpt}: has no LoRA adapter to merge; it is already standalone")
    if not os.path.isdir(ckpt / "adapter"):
        raise CheckpointError(f"{ckpt}: its config says LoRA but it has no adapter/ directory; the checkpoint is incomplete")
    if os.path.exists(out) and not os.path.isdir(out):
        raise CheckpointError(f"{out}: is a file; name the directory to write")
    real_ckpt, real_out = ckpt.resolve(), out.resolve()
    if real_out == real_ckpt or real_out.is_relative_to(real_ckpt):
        raise CheckpointError(f"{out}: is the checkpoint or inside it; name a directory outside {ckpt}")
    if real_ckpt.is_relative_to(real_out):
        raise CheckpointError(f"{out}: holds the checkpoint {ckpt}; name a new or empty directory elsewhere")
    if os.path.isdir(out) and any(out.iterdir()):
        raise CheckpointError(f"{out}: exists and is not empty; name a new or empty directory "
                              "(merge-lora never writes over or beside other files)")
    return ckpt, out


def run_merge(args: argparse.Namespace) -> int:
    import contextlib
    import shutil
    import tempfile

    from vlmsam.errors import CheckpointError
    from vlmsam.io.result_set import os_error_text

    ckpt, out = check_merge(args.checkpoint, args.out_dir)
    from vlmsam.seg_token import SegTokenModel

    model = SegTokenModel.from_pretrained(ckpt)
    try:  # written beside OUT_DIR, then renamed into place: a failure leaves no half-written checkpoint
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.merging-"))
    except OSError as exc:
        raise CheckpointError(f"{out}: cannot be written ({os_error_text(exc)})") from None
    try:
        model.save_merged(tmp)
        from vlmsam.io.writer import current_umask

        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it 0700
        if out.is_dir():
            out.rmdir()  # empty (checked above)
        os.rename(tmp, out)
    except OSError as exc:
        raise CheckpointError(f"{out}: {os_error_text(exc)}; nothing was written") from None
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
    print(f"merged LoRA into the base weights -> {out}")
    return 0

