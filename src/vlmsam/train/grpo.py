"""``vlmsam train CONFIG`` with ``train.method: grpo``: reinforcement learning of a grounding VLM through trl.

The policy is the box_prompt design's VLM (``model.vlm``: a local Qwen2-VL / Qwen2.5-VL directory or hub
id, e.g. the bundled vlmsam-tiny-grounding's ``vlm/``), asked in ``model.style``'s words; trl's
``GRPOTrainer`` samples ``grpo.num_generations`` completions per request, scores each with the chosen
published reward (:mod:`vlmsam.grounding.rewards`, one trl reward function per term, so every term is
logged on its own), and updates the policy; trl runs under accelerate, so torchrun, DeepSpeed and several
nodes come with it. With ``model.use_lora`` the adapter is trained and the reference policy of the KL term is
the base model with the adapter disabled (trl keeps no second copy). Rollouts of one group share the image
prefix (:mod:`vlmsam.train.rollouts`) unless ``grpo.rollouts: trl``.

A run directory holds trl's checkpoints (``trl/checkpoint-N``: weights, optimizer, scheduler and RNG states:
``--resume auto`` continues exactly), ``log.jsonl``, ``curves.png``, TensorBoard events and, at the end,
``final/``: a box_prompt checkpoint (``vlmsam segment --model RUN/final``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from vlmsam.errors import VlmsamError
from vlmsam.grounding import published, rewards
from vlmsam.train.config import ConfigError, TrainConfig

TERMS = {"seg_zero": ("think_format", "answer_format", "box_iou", "box_l1", "points"),
         "vision_reasoner": ("think_format", "answer_format", "accuracy", "non_repeat"),
         "mask_iou": ("think_format", "mask_iou")}
STYLES = ("qwen2_5_vl", "qwen3_vl", *published.RECIPES)  # qwen3_vl answers on a 0-1000 grid, the rest in pixels


def completion_text(completion) -> str:
    """trl hands conversational completions as ``[{"role": "assistant", "content": text}]``."""
    if isinstance(completion, list):
        return "".join(str(m.get("content", "")) for m in completion if isinstance(m, dict))
    return str(completion)


def as_tagged(text: str) -> str:
    """A plain grounding answer (``qwen2_5_vl``, ``qwen3_vl``: JSON, or words such as "There is no ...") in the
    published ``<think></think><answer>...</answer>`` shape; an answer with no JSON names nothing (``[]``)."""
    from vlmsam.grounding.parse import _answer_part

    part = _answer_part(text).strip()
    start = min([i for i in (part.find("["), part.find("{")) if i >= 0], default=-1)
    body = part[start:] if start >= 0 else "[]"
    if body.startswith("{"):
        body = f"[{body}]"
    return f"<think></think><answer>{body}</answer>"


class RewardTerms:
    """The chosen reward as one trl reward function per term; a term that is not a finite number (or a
    scorer that fails) counts 0 and is counted in ``failures``, never a crash.

    ``tagged``: the style asks for ``<think>`` / ``<answer>`` (the published ones). Otherwise (``qwen2_5_vl``,
    ``qwen3_vl``) the answer is read as :func:`as_tagged` puts it and the think-format term is left out."""

    def __init__(self, reward: str, mask_scorer=None, *, tagged: bool = True, iou_tiers: bool = True):
        if reward not in TERMS:
            raise ConfigError(f"grpo.reward: '{reward}' is not one of {', '.join(TERMS)}")
        if reward == "mask_iou" and mask_scorer is None:
            raise ConfigError("grpo.reward: mask_iou needs model.sam (SAM draws each completion's prompts)")
        self.reward, self.mask_scorer, self.tagged, self.failures = reward, mask_scorer, tagged, 0
        self.iou_tiers = iou_tiers
        self._cache: dict = {}

    def functions(self) -> list:
        return [self._term(name) for name in self.functions_names()]

    def functions_names(self) -> tuple[str, ...]:
        return tuple(n for n in TERMS[self.reward] if self.tagged or n != "think_format")

    def scores(self, text: str, truth_json: str, row: dict) -> dict[str, float]:
        key = (text, truth_json, row.get("image_key"))
        if key not in self._cache:  # every term's function asks for the same completion: score it once
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[key] = self._score(text, truth_json, row)
        return self._cache[key]

    def _score(self, text: str, truth_json: str, row: dict) -> dict[str, float]:
        try:
            data = json.loads(truth_json)
            truth = rewards.Truth.of(data["boxes"], data["points"])
            text = text if self.tagged else as_tagged(text)
            if self.reward == "mask_iou":
                return rewards.mask_iou_reward(text, self.mask_scorer(text, row), tiers=self.iou_tiers)
            return rewards.REWARDS[self.reward](text, truth)
        except Exception:  # noqa: BLE001 -- a reward never ends a run; the failure is counted and logged
            self.failures += 1
            return {}

    def _term(self, name: str):
        def term(prompts, completions, truth, **kwargs):
            rows = [{k: kwargs[k][i] for k in ("image_key", "target", "frame") if k in kwargs} for i in range(len(truth))]
            out = []
            for c, t, row in zip(completions, truth, rows):
                value = self.scores(completion_text(c), t, row).get(name, 0.0)
                if not math.isfinite(value):
                    self.failures += 1
                    value = 0.0
                out.append(float(value))
            return out

        term.__name__ = name  # trl logs rewards/<name>/mean
        return term


def check(cfg: TrainConfig) -> None:
    """One-line errors for settings GRPO cannot take, before anything loads."""
    g, m = cfg.grpo, cfg.model
    if cfg.model_type != "box_prompt":
        raise ConfigError(f"train.method grpo trains a grounding VLM: set model.model_type: box_prompt (not {cfg.model_type})")
    if m.style not in STYLES:
        raise ConfigError(f"model.style: GRPO answers are scored in the frame of {', '.join(STYLES)}, not '{m.style}'")
    if g.reward not in TERMS:
        raise ConfigError(f"grpo.reward: '{g.reward}' is not one of {', '.join(TERMS)}")
    if g.num_generations < 2:
        raise ConfigError("grpo.num_generations must be at least 2: the advantage compares completions of one group")
    if g.rollouts not in ("shared", "trl"):
        raise ConfigError(f"grpo.rollouts: 'shared' or 'trl', not '{g.rollouts}'")
    if g.use_vllm and g.rollouts == "shared":
        raise ConfigError("grpo.use_vllm takes trl's vLLM rollouts: set grpo.rollouts: trl")


def trl_arguments(cfg: TrainConfig, run_dir: Path, suppressed: list[int] = ()):
    """trl's GRPOConfig from ours (the names users know from trl, the values from the YAML); ``suppressed``: token
    ids trl's own generation must never draw (the vision tokens)."""
    import torch
    from trl import GRPOConfig

    g, t = cfg.grpo, cfg.train
    try:
        import tensorboard  # noqa: F401

        report = ["tensorboard"]
    except ImportError:
        report = []
    return GRPOConfig(
        output_dir=str(run_dir / "trl"), report_to=report,  # TensorBoard events: trl/runs/
        per_device_train_batch_size=g.num_generations * g.prompts_per_step, num_generations=g.num_generations,
        gradient_accumulation_steps=t.grad_accumulation_steps, max_steps=t.epochs * t.steps_per_epoch,
        learning_rate=t.lr, weight_decay=t.weight_decay, warmup_steps=t.warmup_steps, max_grad_norm=t.max_grad_norm or 1e9,
        temperature=g.temperature, beta=g.beta, epsilon=g.epsilon, max_completion_length=g.max_completion_length,
        use_vllm=g.use_vllm, seed=t.seed, data_seed=t.seed, logging_steps=t.log_every, save_steps=t.save_every,
        save_total_limit=t.keep_last, bf16=t.precision == "bf16", fp16=t.precision == "fp16",
        use_cpu=not torch.cuda.is_available(), remove_unused_columns=False, dataloader_num_workers=0,
        gradient_checkpointing=t.gradient_checkpointing, disable_tqdm=not t.progress, log_completions=False,
        generation_kwargs={"suppress_tokens": suppressed} if suppressed else None)


def lora_config(m):
    from peft import LoraConfig

    # the language model's projections only (the vision tower's blocks share the names q/k/v)
    targets = r"^(?!.*visual).*\.(" + "|".join(m.lora_targets) + r")$"
    return LoraConfig(r=m.lora_r, lora_alpha=m.lora_alpha, lora_dropout=m.lora_dropout, target_modules=targets,
                      task_type="CAUSAL_LM")


def resume_point(cfg: TrainConfig, run_dir: Path):
    """``train.resume``: "auto" (the newest trl checkpoint, if any), a checkpoint directory, or None."""
    r = cfg.train.resume
    if not r:
        return None
    if r == "auto":  # the newest complete checkpoint (a kill while saving leaves one without its trainer state)
        found = sorted((p for p in (run_dir / "trl").glob("checkpoint-*") if (p / "trainer_state.json").is_file()),
                       key=lambda p: int(p.name.split("-")[-1]))
        return str(found[-1]) if found else None
    if not Path(r).is_dir():
        raise ConfigError(f"train.resume: {r}: no such checkpoint directory")
    return r


def train_grpo(cfg: TrainConfig, *, print_fn=print, callbacks=()) -> dict:
    """Run GRPO as configured; returns the last logged metrics (``callbacks``: more trl/transformers callbacks)."""
    from trl import GRPOTrainer

    from vlmsam.train.grpo_log import RunLog
    from vlmsam.train.rollouts import SharedPrefixRollouts
    from vlmsam.train.trainer import seed_everything
    from vlmsam.vlm.processor import VlmProcessor
    from vlmsam.vlm.runtime import load_vlm_model
    from vlmsam.vlm.trl_processor import TrlVlmProcessor

    check(cfg)
    m, t, g = cfg.model, cfg.train, cfg.grpo
    run_dir = Path(t.run_dir)
    resume = resume_point(cfg, run_dir)
    if run_dir.exists() and any(run_dir.iterdir()) and resume is None and not t.overwrite:
        raise VlmsamError(f"{run_dir}: holds another run; resume it (--resume auto) or start over (--overwrite)")
    if resume is None and t.overwrite:  # another run's checkpoints must not be resumed into this one
        import shutil

        shutil.rmtree(run_dir / "trl", ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(run_dir / "config.yaml")
    seed_everything(t.seed)
    model = load_vlm_model(m.vlm)
    processor = VlmProcessor.from_pretrained(m.vlm)
    if not m.use_lora and not m.train_vision_tower:
        for p in model.model.visual.parameters():
            p.requires_grad_(False)
    from vlmsam.train.grpo_data import GrpoRequests

    data = GrpoRequests(cfg.data, m.style, processor.resized_size, seed=t.seed, max_requests=g.max_requests)
    scorer = None
    if g.reward == "mask_iou":
        from vlmsam.train.grpo_masks import MaskScorer

        scorer = MaskScorer(m.sam, m.style, prompt=m.prompt, multimask=m.multimask)
    tiers = g.iou_tiers
    terms = RewardTerms(g.reward, scorer, tagged=m.style in published.RECIPES, iou_tiers=g.reward != "mask_iou" or tiers)
    log = RunLog(run_dir, terms, resume=resume is not None)
    rollout = SharedPrefixRollouts(processor, g) if g.rollouts == "shared" else None
    from vlmsam.train.rollouts import vision_token_ids

    args = trl_arguments(cfg, run_dir, vision_token_ids(processor))  # once: a second one resets accelerate's state
    trainer = GRPOTrainer(model=model, reward_funcs=terms.functions(), args=args, train_dataset=data.as_hf(),
                          processing_class=TrlVlmProcessor.of(processor), peft_config=lora_config(m) if m.use_lora else None,
                          callbacks=[log, *callbacks], rollout_func=rollout)
    print_fn(f"grpo: {len(data)} requests, {g.num_generations} completions each, reward {g.reward} "
             f"({', '.join(terms.functions_names())}), {args.max_steps} steps")
    trainer.train(resume_from_checkpoint=resume)
    final = export(trainer.model, processor, cfg, run_dir / "final")
    print_fn(f"grpo: done; the box_prompt checkpoint is {final} (unusable rewards counted: {terms.failures})")
    return log.last


def export(model, processor, cfg: TrainConfig, out: Path) -> Path:
    """The trained policy as a box_prompt checkpoint: ``vlm/`` (LoRA merged), the segmenter's settings, SAM by path."""
    from vlmsam.engine.registry import CONFIG_NAME

    m = cfg.model
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out / "vlm")
    processor.save_pretrained(out / "vlm")
    settings = {"model_type": "vlmsam_box_prompt", "vlm": "vlm", "sam": str(Path(m.sam).resolve()) if Path(m.sam).exists()
                else m.sam, "style": m.style, "union": m.union, "multimask": m.multimask, "prompt": m.prompt,
                "max_new_tokens": max(m.max_new_tokens, cfg.grpo.max_completion_length)}
    (out / CONFIG_NAME).write_text(json.dumps(settings, indent=2))
    return out

