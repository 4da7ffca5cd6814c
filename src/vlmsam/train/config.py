"""The training config: a YAML file plus ``key=value`` overrides, saved resolved with the run.

Sections mirror what they configure: ``model`` is the trained design's own config (the
``config_class`` of its :class:`~vlmsam.engine.spec.TrainingSpec`, chosen by ``model.model_type``), ``data``
the datasets and mixture, ``train`` the optimisation, and
``eval`` validation. An override names a key as ``section.key=value`` or, where unambiguous, as
``key=value``; values are parsed as YAML (``true``/``false``, numbers, lists).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from vlmsam.engine.registry import DEFAULT_DESIGN, trainable
from vlmsam.errors import CheckpointError, VlmsamError, first_line
from vlmsam.io.files import read_text


class ConfigError(VlmsamError):
    pass


@dataclass
class DataConfig:
    dataset_dir: str = "dataset"
    datasets: str = "reason_seg"
    sample_rates: str = "1"
    reason_seg_data: str = "ReasonSeg|train"
    refer_seg_data: str = "refclef,refcoco,refcoco+,refcocog"
    sem_seg_data: str = "ade20k,cocostuff,pascal_part,paco_lvis,mapillary"
    vqa_data: str = "llava_instruct_150k"
    seg_pp_data: str = "caption,conversation,cot,instance_seg"
    coco_instances_data: str = "annotations/instances_train2017.json|train2017"  # ANNOTATIONS.json|IMAGE_DIR (SAM 3)
    explanatory: float = 0.1
    synth_describe_first: bool = False  # synthetic answers first name every shape, then decide
    synth_extra_requests: int = 0  # further requests drawn about each synthetic scene (one image encoding)
    synth_answer_format: str = "seg"  # "grounding": answer with Qwen2.5-VL JSON boxes/points instead of [SEG]
    synth_extra_kind_weights: str = ""  # how those are drawn, e.g. "uniqueness=0.3" (others: the generator's)
    synth_extra_phrasing: str = "original"  # their wording: original, rich, heldout or mixed (original or rich)
    synth_request_noise: float = 0.0  # share of requests given made-up filler words (phrasings.with_unknown_words)
    synth_absent_anchor: float = 0.0  # share of further no-target requests asked as a relation to the absent shape
    synth_kind_check: float = 0.0  # share of them naming a colour in the picture with a kind that is not
    num_workers: int = 2
    on_bad_sample: str = "skip"  # or "error"

    def synth_options(self) -> dict:
        """The ``data.synth_*`` settings as :class:`vlmsam.data.synth_dataset.SynthDataset` takes them (supervised
        training and GRPO build the synthetic scenes from this one mapping)."""
        return {"describe_first": self.synth_describe_first, "extra_requests": self.synth_extra_requests,
                "extra_kind_weights": self.synth_extra_kind_weights, "answer_format": self.synth_answer_format,
                "extra_phrasing": self.synth_extra_phrasing, "request_noise": self.synth_request_noise,
                "absent_anchor": self.synth_absent_anchor, "kind_check": self.synth_kind_check}


@dataclass
class OptimConfig:
    run_dir: str = "runs/default"
    epochs: int = 1
    steps_per_epoch: int = 500
    batch_size: int = 2  # per rank, per micro-step
    grad_accumulation_steps: int = 1
    lr: float = 3e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.0
    warmup_steps: int = 100
    max_grad_norm: float = 1.0  # 0 turns clipping off
    precision: str = "fp32"  # fp32 | bf16 | fp16
    gradient_checkpointing: bool = False
    seed: int = 42
    save_every: int = 500
    keep_last: int = 2
    log_every: int = 10
    sam_embedding_cache: str = ""  # a directory: precompute frozen SAM embeddings once
    deepspeed: str = ""  # a DeepSpeed JSON config (ZeRO-2/3) instead of DDP
    resume: str = ""  # "auto", a checkpoint directory, or "" (start fresh)
    init_from: str = ""  # a trained checkpoint of this design whose trained weights start a fresh run (fine-tuning)
    stop_at_step: int = 0  # end the run early at this step, schedule unchanged (0 = run to the end)
    overwrite: bool = False  # start over in a run directory that holds another run (its checkpoints are deleted)
    progress: bool = True
    method: str = "sft"  # "grpo": reinforcement learning of a grounding VLM through trl (the grpo section)


@dataclass
class GrpoConfig:
    """``train.method: grpo`` (vlmsam/train/grpo.py): group-relative policy optimisation through trl's GRPOTrainer."""

    reward: str = "vision_reasoner"  # seg_zero | vision_reasoner | mask_iou (SAM-R1; SAM draws each completion)
    iou_tiers: bool = True  # mask_iou: SAM-R1's tiers 4/3/2/0 (false: 4 x the IoU)
    num_generations: int = 8  # completions per request (the group)
    prompts_per_step: int = 2  # requests per optimizer step (per rank)
    temperature: float = 1.0
    beta: float = 0.01  # KL coefficient against the reference policy (0: none is kept)
    epsilon: float = 0.2  # clip range of the policy ratio
    max_completion_length: int = 256
    rollouts: str = "shared"  # "shared": one image prefix per group (vlmsam); "trl": trl's own generation
    use_vllm: bool = False  # trl's vLLM rollouts (needs vllm and a GPU; never required)
    max_requests: int = 0  # use only the first N requests of the data (0 = all)


@dataclass
class EvalConfig:
    val_dataset: str = ""  # e.g. reason_seg:val ; "" = no validation
    val_every: int = 500
    val_samples: int = 0  # 0 = the whole split
    max_new_tokens: int = 32


def model_section(name: str):
    """The default ``model`` section of the design ``name`` (its training spec's config class)."""
    try:
        return trainable(name).config_class()
    except CheckpointError as exc:
        raise ConfigError(f"model.model_type: {exc}") from None


@dataclass
class TrainConfig:
    model: object = field(default_factory=lambda: model_section(DEFAULT_DESIGN))  # a dataclass of the design's
    data: DataConfig = field(default_factory=DataConfig)
    train: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    grpo: GrpoConfig = field(default_factory=GrpoConfig)
    model_type: str = DEFAULT_DESIGN  # which design trains; it chooses the model section's class

    SECTIONS = ("model", "data", "train", "eval", "grpo")

    def to_dict(self) -> dict:
        out = {name: asdict(getattr(self, name)) for name in self.SECTIONS}
        out["model"] = {"model_type": self.model_type, **out["model"]}
        return out

    def set_model_type(self, name: str) -> None:
        """Choose the design (``model.model_type``); its config class replaces the model section."""
        name = str(name)
        if name != self.model_type:
            self.model_type, self.model = name, model_section(name)

    def save(self, path: Path) -> None:
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        cfg = cls()
        unknown = sorted(set(data) - set(cls.SECTIONS))
        if unknown:
            raise ConfigError(f"unknown config section(s) {unknown}; sections are {', '.join(cls.SECTIONS)}")
        model = dict(data.get("model") or {})
        if "model_type" in model:
            cfg.set_model_type(model.pop("model_type"))
        for name, values in {**data, "model": model}.items():
            if values is not None and not isinstance(values, dict):
                raise ConfigError(f"config section '{name}' must be a mapping of key: value")
            for key, value in (values or {}).items():
                cfg.set(f"{name}.{key}", value)
        return cfg

    @classmethod
    def load(cls, path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
        data = {}
        if path:
            p = Path(path)
            if not p.exists():  # a folder or a FIFO is named by read_text below
                raise ConfigError(f"{p}: no such config file")
            try:
                data = yaml.safe_load(read_text(p, "a YAML config"))
            except VlmsamError as exc:  # not a regular file, too large, not UTF-8
                raise ConfigError(str(exc)) from None
            except yaml.YAMLError as exc:
                raise ConfigError(f"{p}: not valid YAML ({first_line(exc)})") from None
            except RecursionError:
                raise ConfigError(f"{p}: nested too deeply to be a config; see configs/") from None
            if not isinstance(data, dict):
                what = "empty" if data is None else f"a YAML {type(data).__name__}"
                raise ConfigError(f"{p}: {what}, not a mapping of sections ({', '.join(cls.SECTIONS)}); see configs/")
        cfg = cls.from_dict(data)
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override '{item}' is not key=value")
            key, value = item.split("=", 1)
            try:
                parsed = yaml.safe_load(value) if value.strip() else ""
            except (yaml.YAMLError, RecursionError) as exc:
                what = "nested too deeply" if isinstance(exc, RecursionError) else f"not valid YAML ({first_line(exc)})"
                raise ConfigError(f"override '{key.strip()}': the value is {what}") from None
            cfg.set(key.strip(), parsed)
        return cfg

    def set(self, key: str, value) -> None:
        if key in ("model.model_type", "model_type"):
            self.set_model_type(value)
            return
        if "." in key:
            section, name = key.split(".", 1)
            if section not in self.SECTIONS:
                raise ConfigError(f"unknown config section '{section}' in '{key}'")
        else:
            owners = [s for s in self.SECTIONS if name_in(getattr(self, s), key)]
            if len(owners) != 1:
                raise ConfigError(f"'{key}' is {'ambiguous' if owners else 'not a config key'}; write it as section.key")
            section, name = owners[0], key
        target = getattr(self, section)
        types = {f.name: f.type for f in fields(target)}
        if name not in types:
            raise ConfigError(f"unknown config key '{section}.{name}'")
        setattr(target, name, coerce(value, getattr(target, name), f"{section}.{name}"))


def name_in(obj, key: str) -> bool:
    return key in {f.name for f in fields(obj)}


def coerce(value, current, key: str):
    """Check ``value`` against the type of the default it replaces."""
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if isinstance(current, int) and not isinstance(current, bool):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if isinstance(current, float):
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:  # YAML 1.1 reads 1e-4 (no dot) as a string
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"{key} must be a number, got {value!r}")
        if not math.isfinite(number):
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
        return number
    if isinstance(current, list):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        if current and isinstance(current[0], float):
            try:
                return [float(v) for v in value]
            except (TypeError, ValueError):
                raise ConfigError(f"{key} must be a list of numbers, got {value!r}") from None
        return value
    if isinstance(current, str):
        return "" if value is None else str(value)
    return value
