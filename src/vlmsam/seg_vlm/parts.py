"""Which parts of a fine-tuned VLM model train: found through the model's structure (each model's
``_parts()``), declared by its config (``train_<part>``, ``use_lora``), summarised per component (STYLE:
trainable parameters are declared, not discovered)."""

from __future__ import annotations

from torch import nn


class TrainablePartsMixin:
    def _parts(self) -> dict[str, nn.Module]:
        """Every part that can train besides LoRA, by the name of its ``train_<name>`` switch."""
        raise NotImplementedError

    def _vlm_parts(self) -> dict[str, nn.Module]:
        """The VLM's parts, found through its structure (not by matching parameter names)."""
        base = self._base_vlm()
        return {"language_model": base.model.language_model, "lm_head": base.get_output_embeddings(),
                "embed_tokens": base.get_input_embeddings(), "vision_tower": base.model.visual}

    @staticmethod
    def _own(part: str, key: str) -> bool:
        """Whether ``key`` (a name inside part ``part``) belongs to that part: LoRA weights are their
        own part, and the language model's embeddings are ``embed_tokens``."""
        return "lora_" not in key and not (part == "language_model" and key.startswith("embed_tokens."))

    def components(self) -> dict[str, list[nn.Parameter]]:
        """The parameters of every part that can train, by name (LoRA first)."""
        lora = [p for n, p in self.vlm.named_parameters() if ".lora_" in n]
        return {"lora": lora, **{name: [p for n, p in module.named_parameters() if self._own(name, n)]
                                 for name, module in self._parts().items()}}

    def apply_trainable(self) -> None:
        """Freeze everything, then unfreeze exactly the components the config declares."""
        for p in self.parameters():
            p.requires_grad_(False)
        for name, params in self.components().items():
            if self.config.trainable(name):
                for p in params:
                    p.requires_grad_(True)

    def trainable_summary(self) -> str:
        """A table of trainable / frozen parameter counts per component."""
        seen: set[int] = set()
        rows = []
        for name, params in self.components().items():
            unique = [p for p in params if id(p) not in seen]
            seen.update(id(p) for p in unique)
            n = sum(p.numel() for p in unique)
            trainable = sum(p.numel() for p in unique if p.requires_grad)
            rows.append((name, trainable, n - trainable))
        rest = [p for p in self.parameters() if id(p) not in seen]
        rows.append(("other (frozen base)", sum(p.numel() for p in rest if p.requires_grad), sum(p.numel() for p in rest if not p.requires_grad)))
        lines = [f"{'component':<22}{'trainable':>14}{'frozen':>14}"]
        lines += [f"{name:<22}{t:>14,}{f:>14,}" for name, t, f in rows]
        total_t = sum(r[1] for r in rows)
        total_f = sum(r[2] for r in rows)
        lines.append(f"{'total':<22}{total_t:>14,}{total_f:>14,}")
        return "\n".join(lines)
