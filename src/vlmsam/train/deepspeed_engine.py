"""DeepSpeed ZeRO-2 / ZeRO-3 as an optional engine for full fine-tunes of 7B+ models.

``train.deepspeed=configs/deepspeed_zero3.json`` (launched with ``torchrun`` or ``deepspeed``)
replaces DDP with a DeepSpeed engine: ZeRO partitions the optimizer state (stage 2) and the
parameters (stage 3) across GPUs. Batch size, accumulation, precision and clipping come from the
vlmsam config and are written into the DeepSpeed config (values set there must agree). Our AdamW
and warm-up/decay schedule are handed to the engine, so the optimisation is the same as with DDP.

Checkpoints keep the vlmsam format (the trained weights, gathered from their ZeRO-3 shards, so
``vlmsam evaluate`` reads them as usual) plus the engine's own sharded state under
``deepspeed/``, from which ``--resume`` restores optimizer and scheduler.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from vlmsam.train.config import ConfigError

DTYPE_KEYS = {"bf16": "bf16", "fp16": "fp16"}


def ds_config(cfg, world_size: int) -> dict:
    t = cfg.train
    path = Path(t.deepspeed)
    if not path.is_file():
        raise ConfigError(f"{path}: no such DeepSpeed config")
    from vlmsam.errors import VlmsamError
    from vlmsam.io.files import read_json

    try:
        conf = read_json(path, "a DeepSpeed config (a JSON object)", dict)
    except VlmsamError as exc:
        raise ConfigError(str(exc)) from None
    ours = {
        "train_micro_batch_size_per_gpu": t.batch_size,
        "gradient_accumulation_steps": t.grad_accumulation_steps,
        "train_batch_size": t.batch_size * t.grad_accumulation_steps * world_size,
        "gradient_clipping": t.max_grad_norm,
    }
    for key, value in ours.items():
        if conf.get(key, "auto") not in ("auto", value):
            raise ConfigError(f"{path}: {key}={conf[key]} disagrees with the vlmsam config ({value}); use \"auto\"")
        conf[key] = value
    for name in ("bf16", "fp16"):
        conf[name] = {**conf.get(name, {}), "enabled": t.precision == name}
    conf.pop("optimizer", None)  # ours (AdamW 0.9/0.95) and our schedule are passed in
    conf.pop("scheduler", None)
    return conf


def initialize(model, optimizer, scheduler, cfg, world_size: int):
    try:
        import deepspeed
    except ImportError:
        raise ConfigError("train.deepspeed needs the deepspeed package: pip install deepspeed") from None
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=ds_config(cfg, world_size))
    return engine


@contextmanager
def gathered(model, engine):
    """Full (un-partitioned) trainable weights for the duration, on every rank (ZeRO-3); every weight for a
    model whose checkpoints hold its frozen weights too (``saves_frozen_weights``, e.g. SAM 3's)."""
    if engine is None or engine.zero_optimization_stage() < 3:
        yield
        return
    import deepspeed

    whole = getattr(model, "saves_frozen_weights", False)
    params = [p for p in model.parameters() if whole or p.requires_grad]
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        yield


def save_engine_state(engine, directory: Path) -> None:
    """Collective: every rank writes its shard of optimizer (and ZeRO-3 parameter) state."""
    engine.save_checkpoint(str(directory), tag="state")


def load_engine_state(engine, directory: Path) -> None:
    path, _ = engine.load_checkpoint(str(directory), tag="state", load_module_strict=False)
    if path is None:
        raise ConfigError(f"{directory}: no DeepSpeed state to resume from")
