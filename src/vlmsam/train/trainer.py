"""``vlmsam train``: the same loop as one process or under ``torchrun`` (DDP).

Per optimizer step each rank reads ``batch_size x grad_accumulation_steps`` samples from its own
stream of the mixture (sample ``k`` of rank ``r`` depends only on ``(seed, r, k)``), so a resumed
run continues with exactly the data an uninterrupted one would have seen. Validation answers the
validation prompts with the real generation path; rank 0 writes checkpoints atomically.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from vlmsam.data.mixture import BadSampleLog, Mixture, ResumableSampler
from vlmsam.data.registry import build_eval_dataset, build_family, split_list
from vlmsam.engine.registry import trainable
from vlmsam.errors import VlmsamError
from vlmsam.evaluation.evaluate import evaluate
from vlmsam.distributed import barrier, init_distributed, shutdown
from vlmsam.train import checkpoint as ckpt
from vlmsam.train.config import ConfigError, TrainConfig
from vlmsam.train.plots import plot_curves
from vlmsam.train.steps import DTYPES, Progress, build_optimization, optimizer_step, restore, save



def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class PrepareContext:
    """What a design's ``TrainingSpec.prepare`` sees before the first step."""

    cfg: TrainConfig
    mixture: Mixture
    info: object
    collator: object


# Keys that may change between a run and its resumption (they do not change what is trained).
# train.run_dir too: a run that was moved or copied resumes where its checkpoints are now.
RESUMABLE_KEYS = {"train.resume", "train.stop_at_step", "train.progress", "train.log_every", "data.num_workers",
                  "train.overwrite", "eval.val_every", "eval.val_samples", "eval.max_new_tokens", "train.keep_last",
                  "train.save_every", "data.on_bad_sample", "train.run_dir"}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def check_run_dir(cfg: TrainConfig, run_dir: Path, resume_from: Path | None) -> None:
    """A new run refuses a directory that holds another run; a resumed one refuses a checkpoint
    trained with a different config (anything but RESUMABLE_KEYS)."""
    existing = ckpt.list_checkpoints(run_dir) if run_dir.is_dir() else []
    if resume_from is None:
        if existing and not cfg.train.overwrite:
            raise ConfigError(f"{run_dir}: already holds a run ({existing[-1].name}); resume it with --resume auto, "
                              "pick another train.run_dir, or pass --overwrite to start over")
        if existing and cfg.train.overwrite:
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
            for name in ("best.json", "log.jsonl", "curves.png"):
                (run_dir / name).unlink(missing_ok=True)
            shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)
        return
    saved = resume_from / "config.yaml"
    if not saved.is_file():
        return
    try:
        theirs = _flat(TrainConfig.load(saved).to_dict())
    except ConfigError as exc:
        raise ConfigError(f"{saved}: the checkpoint's config cannot be read ({exc})") from None
    ours = _flat(cfg.to_dict())
    differ = sorted(k for k in set(ours) | set(theirs) if k not in RESUMABLE_KEYS and ours.get(k) != theirs.get(k))
    if differ:
        shown = ", ".join(f"{k} ({theirs.get(k)!r} -> {ours.get(k)!r})" for k in differ[:4])
        raise ConfigError(f"{resume_from}: was trained with another config; differing: {shown}"
                          + (f" and {len(differ) - 4} more" if len(differ) > 4 else "")
                          + "; resume with the same config, or start a new run directory")


def resolve_run(cfg: TrainConfig, print_fn=print) -> tuple[Path, Path | None, str]:
    """``(run_dir, checkpoint to resume from, note)``. The run directory is where the checkpoint is:
    ``--resume PATH`` of ``RUN/checkpoints/step_N`` resumes RUN, whatever ``train.run_dir`` says; a run
    that was moved or copied resumes in its new place (the note says from where, for the log)."""
    t = cfg.train
    run_dir = Path(t.run_dir)
    resume_from = ckpt.find_resume(run_dir, t.resume)
    if resume_from is not None and t.resume != "auto" and resume_from.parent.name == "checkpoints":
        found_in = resume_from.parent.parent
        if found_in.resolve() != run_dir.resolve():
            print_fn(f"note: resuming the run in {found_in} (where {resume_from.name} is), not train.run_dir={run_dir}")
            run_dir = found_in
    note = ""
    saved = resume_from / "config.yaml" if resume_from is not None else None
    if saved is not None and saved.is_file():
        try:
            recorded = Path(TrainConfig.load(saved).train.run_dir)
        except ConfigError:
            recorded = run_dir  # check_run_dir says what is wrong with it
        if recorded.resolve() != run_dir.resolve():
            note = f"the run was moved or copied from {recorded} to {run_dir}"
            print_fn(f"note: {note}; resuming it here")
    t.run_dir = str(run_dir)  # the config saved with the run names where it is now
    return run_dir, resume_from, note


def build_mixture(cfg: TrainConfig, rank: int, prepare, frame=None) -> Mixture:
    """``frame``: ``(h, w) -> (h, w)`` as the VLM's processor resizes (for grounding answers)."""
    d, t = cfg.data, cfg.train
    families = split_list(d.datasets)
    rates = [float(r) for r in split_list(d.sample_rates)]
    if len(rates) != len(families):
        raise ConfigError(f"data.sample_rates has {len(rates)} value(s) for {len(families)} dataset famil(ies) {families}")
    lists = {"reason_seg": d.reason_seg_data, "refer_seg": d.refer_seg_data, "sem_seg": d.sem_seg_data,
             "vqa": d.vqa_data, "seg_pp": d.seg_pp_data, "coco_instances": d.coco_instances_data}
    built = {}
    for family in families:
        kwargs = {"reason_seg": {"explanatory": d.explanatory},
                  "synth": {**d.synth_options(), "frame": frame}}.get(family, {})
        built[family] = build_family(family, d.dataset_dir, lists.get(family), **kwargs)
    return Mixture(built, dict(zip(families, rates)), seed=t.seed, rank=rank,
                   samples_per_epoch=t.steps_per_epoch * t.batch_size * t.grad_accumulation_steps,
                   prepare=prepare, on_bad_sample=d.on_bad_sample)


def _log_step(line: str) -> int:
    """The step of a ``log.jsonl`` line; -1 for a line that is not one (the partial last line of a
    killed run), so that it is dropped."""
    try:
        entry = json.loads(line)
        return int(entry.get("step", 0)) if isinstance(entry, dict) else -1
    except (ValueError, TypeError):
        return -1


class Logger:
    """``log.jsonl`` always; TensorBoard too when the ``tensorboard`` package is installed."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.enabled = enabled
        self.path = run_dir / "log.jsonl"
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                pass

    def truncate(self, step: int) -> None:
        """Keep only the entries up to ``step``: a resumed run logs the steps after it again."""
        if not self.enabled or not self.path.is_file():
            return
        kept = [line for line in self.path.read_text(errors="replace").splitlines() if 0 <= _log_step(line) <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def log(self, step: int, **values) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)

    def records(self) -> list[dict]:
        lines = self.path.read_text(errors="replace").splitlines() if self.path.is_file() else []
        return [json.loads(x) for x in lines if _log_step(x) >= 0]

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _prepare_run_dir(cfg: TrainConfig, info, print_fn):
    run_dir, resume_from, moved = resolve_run(cfg, print_fn if info.is_main else (lambda _: None))
    check_run_dir(cfg, run_dir, resume_from)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / "config.yaml")
    barrier()
    return run_dir, resume_from, moved


def _build(cfg: TrainConfig, info):
    """The design's training spec, its model on this rank's device and this rank's stream of the mixture."""
    t = cfg.train
    spec = trainable(cfg.model_type)  # the design whose model the config's model section describes
    seed_everything(t.seed)  # identical initial weights on every rank
    model = spec.build(cfg.model)
    seed_everything(t.seed + info.rank)  # then independent dropout per rank
    if spec.gradient_checkpointing is not None:
        spec.gradient_checkpointing(model, t.gradient_checkpointing)
    elif t.gradient_checkpointing:
        raise ConfigError(f"train.gradient_checkpointing: the {cfg.model_type} design has nothing to checkpoint")
    model.to(info.device)
    collator = spec.collator(model)
    frame = spec.answer_frame(model) if spec.answer_frame is not None else None
    mixture = build_mixture(cfg, info.rank, collator.prepare, frame)
    if spec.prepare is not None:
        spec.prepare(model, PrepareContext(cfg, mixture, info, collator))
    return spec, model, mixture, collator


def _loader(mixture, collator, cfg: TrainConfig, info, consumed: int):
    # Its own generator: creating an iterator must not draw from the global RNG, or a resumed run's
    # dropout would drift from an uninterrupted one's.
    return torch.utils.data.DataLoader(mixture, batch_size=cfg.train.batch_size,
                                       sampler=ResumableSampler(len(mixture), start=consumed),
                                       collate_fn=collator, num_workers=cfg.data.num_workers,
                                       generator=torch.Generator().manual_seed(cfg.train.seed + info.rank))


def _validate(design, model, eval_ds, cfg: TrainConfig, info, logger, step: int, print_fn) -> dict:
    model.eval()
    metrics = evaluate(design.segmenter(model), eval_ds, info=info, max_new_tokens=cfg.eval.max_new_tokens,
                       limit=cfg.eval.val_samples, progress=False)
    logger.log(step, val_giou=metrics["giou"], val_ciou=metrics["ciou"], val_n=metrics["n"])
    if info.is_main:
        print_fn(f"step {step}: val gIoU {metrics['giou']:.4f} cIoU {metrics['ciou']:.4f} (n={metrics['n']})")
    return metrics


def start_from(model, path: str, info, print_fn) -> None:
    """``train.init_from``: a trained checkpoint's weights (the parts it trained, LoRA included) as this
    fresh run's starting point; the optimizer and the schedule start anew. A resumed run reads its own
    checkpoint instead."""
    source = Path(path)
    if not source.is_dir():
        raise ConfigError(f"train.init_from: {path} is not a checkpoint directory")
    model.load_trainable(source)  # copied into the parameters in place, on their device
    if info.is_main:
        print_fn(f"starting from the trained weights of {source}")


def train(cfg: TrainConfig, *, stop_after: int | None = None, print_fn=print) -> dict:
    """Run (or resume) training as configured. ``stop_after`` ends the loop after that many global
    steps without finishing the run (tests use it to simulate an interruption)."""
    info = init_distributed()
    t = cfg.train
    if t.precision not in DTYPES:
        raise ConfigError(f"train.precision must be fp32, bf16 or fp16, got '{t.precision}'")
    run_dir, resume_from, moved = _prepare_run_dir(cfg, info, print_fn)
    design, model, mixture, collator = _build(cfg, info)
    if info.is_main:
        print_fn(model.trainable_summary())
    if resume_from is None and t.init_from:
        start_from(model, t.init_from, info, print_fn)
    opt = build_optimization(model, cfg, info.device, info.world_size)
    progress = Progress()
    if resume_from is not None:
        progress = restore(resume_from, model, opt, info)
        if info.is_main:
            print_fn(f"resumed from {resume_from} at step {progress.step}")
    ddp = DistributedDataParallel(model, find_unused_parameters=True) if info.enabled and opt.engine is None else None
    net = opt.engine or ddp or model
    eval_ds = build_eval_dataset(cfg.eval.val_dataset, cfg.data.dataset_dir) if cfg.eval.val_dataset else None
    logger = Logger(run_dir, info.is_main)
    if resume_from is not None:
        logger.truncate(progress.step)  # the steps after the checkpoint are trained, and logged, again
        if moved:
            logger.log(progress.step, note=moved)
    bad = BadSampleLog()
    autocast = (lambda: torch.autocast(info.device.type, dtype=DTYPES[t.precision])) if DTYPES[t.precision] else contextlib.nullcontext
    total_steps = t.epochs * t.steps_per_epoch
    stop = stop_after if stop_after is not None else (t.stop_at_step or None)
    end = total_steps if stop is None else min(total_steps, stop)
    last_metrics: dict = {}
    bar = tqdm(total=end, initial=progress.step, desc="train", unit="step", disable=not (t.progress and info.is_main))
    try:
        while progress.step < end:
            batches = iter(_loader(mixture, collator, cfg, info, progress.consumed))
            epoch_end = (progress.step // t.steps_per_epoch + 1) * t.steps_per_epoch
            while progress.step < min(epoch_end, end):
                model.train()
                t0, lr = time.perf_counter(), t.lr * opt.scheduler.lr_lambdas[0](opt.scheduler.last_epoch)  # train.lr as scheduled for this step
                sums, grad_norm = optimizer_step(net, ddp, opt, batches, bad, t, autocast)
                progress.step += 1
                progress.consumed += t.batch_size * t.grad_accumulation_steps
                bar.update(1)
                bar.set_postfix(loss=f"{sums['loss']:.3f}")
                if progress.step % t.log_every == 0 or progress.step == end:
                    logger.log(progress.step, **sums, lr=lr, grad_norm=grad_norm, step_time=time.perf_counter() - t0)
                if eval_ds is not None and (progress.step % cfg.eval.val_every == 0 or progress.step == total_steps):
                    last_metrics = _validate(design, model, eval_ds, cfg, info, logger, progress.step, print_fn)
                    if last_metrics["giou"] > progress.best["giou"]:
                        progress.best = {"giou": last_metrics["giou"], "step": progress.step}
                        save(run_dir, model, opt, progress, progress.step, cfg, info, print_fn)
                        continue
                if progress.step % t.save_every == 0 or progress.step == total_steps:
                    save(run_dir, model, opt, progress, progress.step, cfg, info, print_fn)
            if progress.step >= epoch_end and info.is_main:
                print_fn(f"epoch {progress.step // t.steps_per_epoch} done; {bad.summary()}")
        if stop_after is None and progress.step == end < total_steps and progress.step % t.save_every:
            save(run_dir, model, opt, progress, progress.step, cfg, info, print_fn)  # stopped early on purpose
        if progress.step == total_steps and info.is_main:
            plot_curves(logger.records(), run_dir / "curves.png")
            print_fn(f"done: {progress.step} steps; curves in {run_dir / 'curves.png'}")
    finally:
        bar.close()
        logger.close()
        net = ddp = opt = None  # noqa: F841 -- released before the process group goes
        shutdown()
    return {"step": progress.step, "consumed": progress.consumed, "best": progress.best, "val": last_metrics, "model": model}


def run_from_cli(config_path: str | None, overrides: list[str]) -> int:
    cfg = TrainConfig.load(config_path, overrides)
    if cfg.train.method not in ("sft", "grpo"):
        raise VlmsamError(f"train.method: 'sft' (supervised) or 'grpo' (reinforcement learning), not '{cfg.train.method}'")
    named = any(o.split("=", 1)[0].strip() in ("train.run_dir", "run_dir") for o in overrides)
    here = Path(config_path).parent if config_path else None
    checkpoints = "trl" if cfg.train.method == "grpo" else "checkpoints"
    if cfg.train.resume == "auto" and here is not None and not named and (here / checkpoints).is_dir():
        cfg.train.run_dir = str(here)  # a run's own config.yaml, given where the run is now (it may have moved)
    if cfg.train.method == "grpo":
        from vlmsam.train.grpo import train_grpo

        train_grpo(cfg)
        return 0
    try:
        train(cfg)
    except FileNotFoundError as exc:
        raise VlmsamError(str(exc)) from None
    return 0
