"""A tiny DINOv2 for the ``proposal_select`` default's ``llmseg`` selector, pre-trained here densely.

LLM-Seg pools frozen DINOv2-large patch features inside each SAM proposal. DINOv2 is pre-trained by
self-distillation on 142M images; nothing of that scale runs on 2 CPU cores, and a random frozen
encoder gives the selection head little to tell shapes apart by. So the tiny one is pre-trained
here with a *supervised* dense objective, the one vlmsam-tiny's vision tower had
(:mod:`tools.pretrain_vision`): a linear probe on every patch predicts the share of each
colour and each shape kind it shows, and where the patch is. Then, as in LLM-Seg, it is frozen.
The result is a transformers ``Dinov2Model`` with its image processor; the probe is saved beside it.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image


@dataclass
class DinoPretrainConfig:
    steps: int = 1500
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    seed: int = 0
    size: int = 128  # the square every image is resized to (a multiple of the patch)
    patch: int = 8
    hidden: int = 96
    layers: int = 4
    heads: int = 4
    kind_weight: float = 3.0
    position_weight: float = 10.0


def build_tiny_dinov2(out_dir: str | Path, config: DinoPretrainConfig) -> Path:
    """An untrained tiny ``Dinov2Model`` and a ``BitImageProcessor`` for ``size x size`` inputs."""
    import torch
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(config.seed)
    Dinov2Model(Dinov2Config(hidden_size=config.hidden, num_hidden_layers=config.layers, num_attention_heads=config.heads,
                             intermediate_size=4 * config.hidden, patch_size=config.patch, image_size=config.size)
                ).save_pretrained(out_dir)
    BitImageProcessor(size={"height": config.size, "width": config.size}, do_center_crop=False,
                      crop_size={"height": config.size, "width": config.size}).save_pretrained(out_dir)
    return Path(out_dir)


def pretrain_dinov2(data_dir: str | Path, out_dir: str | Path, config: DinoPretrainConfig | None = None,
                    *, progress: bool = True) -> dict:
    """Build and pre-train the tiny DINOv2 on ``vlmsam data synth`` scenes; save it to ``out_dir``.
    Returns the last logged losses and held-out colour/kind accuracies (as pretrain_vision reports them)."""
    import torch
    from safetensors.torch import save_file
    from tqdm import tqdm
    from transformers import AutoImageProcessor, Dinov2Model

    from tools.pretrain_vision import cell_targets, probe_losses, rate, shape_shares
    from vlmsam.data.reason_seg import read_annotation
    from vlmsam.data.synth import COLORS, SHAPES, scene_files
    from vlmsam.train.schedules import warmup_cosine

    config = config or DinoPretrainConfig()
    data_dir, out = Path(data_dir), Path(out_dir)
    train_files, val_files = scene_files(data_dir, "train"), scene_files(data_dir, "val")
    build_tiny_dinov2(out, config)
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    model = Dinov2Model.from_pretrained(out).train()
    processor = AutoImageProcessor.from_pretrained(out)
    side = config.size // config.patch
    n_colour, n_kind = len(COLORS) + 1, len(SHAPES) + 1
    head = torch.nn.Linear(config.hidden, n_colour + n_kind + 2)
    params = [*model.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(config.warmup_steps, config.steps))
    r, c = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    centre = torch.stack([(c.flatten() + 0.5) / side, (r.flatten() + 0.5) / side], -1)

    def example(path: Path):
        scene = read_annotation(path)["scene"]
        image = Image.open(path.with_suffix(".jpg")).convert("RGB")
        shares = shape_shares(scene, (image.height, image.width), (config.size, config.size), config.patch)
        colour, kind = cell_targets(scene, shares)
        return image, torch.from_numpy(colour), torch.from_numpy(kind), torch.from_numpy(shares), [SHAPES.index(s["shape"]) for s in scene]

    def forward(files):
        batch = [example(p) for p in files]
        pixels = processor(images=[b[0] for b in batch], return_tensors="pt").pixel_values
        tokens = model(pixel_values=pixels).last_hidden_state[:, 1 : 1 + side * side]  # drop CLS
        logits = list(head(tokens))  # per image (cells, outputs)
        return probe_losses(logits, [b[1] for b in batch], [b[2] for b in batch], centre.repeat(len(batch), 1),
                            [b[3] for b in batch], [b[4] for b in batch])

    log, history, recent = {}, [], []
    bar = tqdm(range(config.steps), desc="DINOv2 pre-training", unit="step", disable=not progress)
    for step in bar:
        ce_colour, ce_kind, mse_position, counts = forward(rng.sample(train_files, config.batch_size))
        loss = ce_colour + config.kind_weight * ce_kind + config.position_weight * mse_position
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        recent.append(counts)
        if (step + 1) % 100 == 0 or step == config.steps - 1:
            log = {"step": step + 1, "ce_colour": ce_colour.item(), "ce_kind": ce_kind.item(),
                   "mse_position": mse_position.item(), "train_colour_acc": rate(recent, "colour_right", "colour_cells"),
                   "train_kind_acc": rate(recent, "kind_right", "shapes")}
            history.append(log)
            recent = []
            bar.set_postfix(colour=f"{log['train_colour_acc']:.2f}", kind=f"{log['train_kind_acc']:.2f}")
    model.eval()
    rng = random.Random(config.seed + 1)
    with torch.no_grad():
        val = [forward(rng.sample(val_files, min(32, len(val_files))))[3] for _ in range(4)]
    log["val_colour_acc"] = rate(val, "colour_right", "colour_cells")
    log["val_kind_acc"] = rate(val, "kind_right", "shapes")
    model.save_pretrained(out)
    save_file(head.state_dict(), out / "pretrain_head.safetensors")
    (out / "pretrain.json").write_text(json.dumps({**config.__dict__, "data": str(data_dir), **log, "history": history}, indent=2))
    return log
