"""The parts of one training run that ``trainer.train`` puts in order: the optimizer and schedule, the
state a resumed run restores, a checkpoint save (plain or DeepSpeed), one optimizer step over its
micro-batches, and validation."""

from __future__ import annotations

import contextlib
import math
import shutil
from dataclasses import dataclass

import torch

from vlmsam.distributed import barrier, gather_objects
from vlmsam.train import checkpoint as ckpt
from vlmsam.train.config import ConfigError
from vlmsam.train.schedules import lr_lambda

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Optimization:
    params: list
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    engine: object = None  # a DeepSpeed engine, which then scales, accumulates, clips and steps itself


def build_optimization(model, cfg, device, world_size: int) -> Optimization:
    t = cfg.train
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": g["params"], "lr": t.lr * g.get("lr_scale", 1.0), "weight_decay": g.get("weight_decay", t.weight_decay)}
              for g in model.optimizer_groups()] \
        if hasattr(model, "optimizer_groups") else params  # a design's parts at rates (and decay) of their own
    optimizer = torch.optim.AdamW(groups, lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(t.warmup_steps, t.epochs * t.steps_per_epoch))
    scaler = torch.amp.GradScaler(device.type, enabled=t.precision == "fp16")
    opt = Optimization(params, optimizer, scheduler, scaler)
    if t.deepspeed:
        from vlmsam.train import deepspeed_engine as dse

        opt.engine = dse.initialize(model, optimizer, scheduler, cfg, world_size)
    return opt


@dataclass
class Progress:
    step: int = 0
    consumed: int = 0  # samples this rank has read
    best: dict = None

    def __post_init__(self):
        self.best = self.best or {"giou": -1.0, "step": None}


def restore(resume_from, model, opt: Optimization, info) -> Progress:
    """Weights, optimizer, schedule, scaler and this rank's RNG from a checkpoint; where the run was."""
    state = ckpt.load_trainer_state(resume_from)
    if opt.engine is not None:  # module, optimizer and scheduler from the engine's shards
        from vlmsam.train import deepspeed_engine as dse

        dse.load_engine_state(opt.engine, resume_from / "deepspeed")
    else:
        model.load_trainable(resume_from)
        opt.optimizer.load_state_dict(state["optimizer"])
        opt.scheduler.load_state_dict(state["scheduler"])
        opt.scaler.load_state_dict(state["scaler"])
    rngs = state["rng"]
    if len(rngs) != info.world_size:
        raise ConfigError(f"{resume_from} was written by {len(rngs)} rank(s); resume it with as many")
    ckpt.set_rng_state(rngs[info.rank])
    return Progress(state["step"], state["consumed"], state["best"])


def save(run_dir, model, opt: Optimization, progress: Progress, at_step: int, cfg, info, print_fn) -> None:
    """A checkpoint at ``at_step``, written whole or not at all (every rank's RNG state in it)."""
    rngs = gather_objects(ckpt.rng_state())
    engine = opt.engine
    if engine is not None:  # every rank writes its shard into the temporary directory first
        from vlmsam.train import deepspeed_engine as dse

        tmp = ckpt.temp_dir(run_dir, at_step)
        if info.is_main and tmp.exists():
            shutil.rmtree(tmp)
        barrier()
        dse.save_engine_state(engine, tmp / "deepspeed")
        barrier()
    with (dse.gathered(model, engine) if engine is not None else contextlib.nullcontext()):
        if info.is_main:
            state = {"step": at_step, "consumed": progress.consumed, "best": progress.best, "rng": rngs}
            if engine is None:
                state.update(optimizer=opt.optimizer.state_dict(), scheduler=opt.scheduler.state_dict(),
                             scaler=opt.scaler.state_dict())
            path = ckpt.save_checkpoint(run_dir, at_step, model, state, (run_dir / "config.yaml").read_text(),
                                        cfg.train.keep_last, progress.best["step"], tmp_started=engine is not None)
            print_fn(f"saved {path}")
    barrier()


def optimizer_step(net, ddp, opt: Optimization, batches, bad, t, autocast) -> tuple[dict, float]:
    """One optimizer step over ``grad_accumulation_steps`` micro-batches: the named losses averaged over
    them, and the gradient norm before clipping."""
    sums: dict[str, float] = {}
    n = t.grad_accumulation_steps
    for micro in range(n):
        batch = next(batches)
        bad.extend(batch.skipped)
        if opt.engine is not None:
            losses = opt.engine(batch).losses()
            opt.engine.backward(losses["loss"])
            opt.engine.step()
        else:
            sync = ddp.no_sync if (ddp is not None and micro < n - 1) else contextlib.nullcontext
            with sync():  # gradients are all-reduced on the last micro-step only
                with autocast():
                    losses = net(batch).losses()
                opt.scaler.scale(losses["loss"] / n).backward()
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v) / n
    if opt.engine is not None:
        return sums, float(opt.engine.get_global_grad_norm() or 0.0)
    opt.scaler.unscale_(opt.optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(opt.params, t.max_grad_norm if t.max_grad_norm > 0 else math.inf)
    opt.scaler.step(opt.optimizer)
    opt.scaler.update()
    opt.optimizer.zero_grad(set_to_none=True)
    opt.scheduler.step()
    return sums, float(grad_norm)
