"""Gradients of one training step, with DDP (run under torchrun) or in one process that
accumulates the ranks' batches: ``python ddp_grads.py OUT.pt ARGS...`` (ARGS are config overrides)."""

import sys

import torch
from torch.nn.parallel import DistributedDataParallel

from vlmsam.engine.registry import trainable
from vlmsam.train.config import TrainConfig
from vlmsam.distributed import init_distributed, shutdown
from vlmsam.train.trainer import build_mixture, seed_everything


def batch_of(model, cfg, rank):
    spec = trainable(cfg.model_type)
    collator = spec.collator(model)
    frame = spec.answer_frame(model) if spec.answer_frame is not None else None
    mixture = build_mixture(cfg, rank, collator.prepare, frame)
    return collator([mixture[k] for k in range(cfg.train.batch_size)])


def main(out, overrides):
    cfg = TrainConfig.load(None, overrides)
    info = init_distributed()
    seed_everything(cfg.train.seed)
    model = trainable(cfg.model_type).build(cfg.model)  # any design that trains
    model.train()
    if info.enabled:  # each rank its own batch; DDP averages the gradients
        ddp = DistributedDataParallel(model, find_unused_parameters=True)
        ddp(batch_of(model, cfg, info.rank)).loss.backward()
    else:  # the same global batch in one process: both ranks' batches, accumulated
        ddp = None
        for rank in range(2):
            (model(batch_of(model, cfg, rank)).loss / 2).backward()
    if info.is_main:
        torch.save({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, out)
    del ddp
    shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
