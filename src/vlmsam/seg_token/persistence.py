"""The [SEG] checkpoint format: the config (``vlmsam_config.json``), the declared trainable weights and the
projection (``trainable.safetensors``), LoRA as a peft adapter, the tokenizer (seg_vlm/persistence.py
writes and reads those), and a merged standalone copy."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from vlmsam.errors import CheckpointError
from vlmsam.sam.backend import SamBackend
from vlmsam.seg_token.config import SegTokenConfig
from vlmsam.seg_vlm.persistence import ADAPTER_DIR, TRAINABLE_WEIGHTS, load_sam, portable  # noqa: F401  (re-exported)

CONFIG_NAME = "vlmsam_config.json"


class SegTokenPersistence:

    def save_pretrained(self, out_dir: str | Path, *, projection_only: bool = False) -> Path:
        """Config, trained weights (``trainable.safetensors``, LoRA as a peft adapter) and tokenizer.
        ``projection_only``: the other weights are saved in full beside it (``save_merged``)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        replace(self.config, vlm=portable(self.config.vlm, out), sam=portable(self.config.sam, out)).save(out / CONFIG_NAME)
        state = self.trainable_state_dict()
        if projection_only:
            state = {k: v for k, v in state.items() if k.startswith("projection.")}
        self.save_weights(out, state)
        return out

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device=None):
        path = Path(path)
        if not (path / CONFIG_NAME).is_file():
            raise CheckpointError(f"{path}: not a vlmsam [SEG] checkpoint (no {CONFIG_NAME})")
        config = SegTokenConfig.load(path / CONFIG_NAME)
        vlm, processor = cls.load_checkpoint_vlm(config, path)
        return cls(vlm, processor, SamBackend(load_sam(config.sam, path)), config).finish_loading(path, device)

    def save_merged(self, out_dir: str | Path) -> Path:
        """A standalone checkpoint: merged VLM and SAM saved in full beside the config."""
        out = Path(out_dir)
        self.merge_lora()
        self._base_vlm().save_pretrained(out / "vlm")
        self.processor.save_pretrained(out / "vlm")  # an ordinary transformers directory: tokenizer and image processor too
        self.sam.save_pretrained(out / "sam")
        self.config.vlm, self.config.sam = str(out / "vlm"), str(out / "sam")  # saved relative to the checkpoint
        return self.save_pretrained(out, projection_only=True)
