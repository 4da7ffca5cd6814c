"""Loading SAM weights: hub ids, transformers directories, and Meta's original ``.pth`` files.

Meta's ``sam_vit_{b,l,h}_*.pth`` are plain state dicts in the layout of the ``segment-anything``
package. They are read with ``torch.load(weights_only=True)`` (a file that carries pickled code is
refused) and renamed to the transformers layout in memory; the architecture (ViT-B/L/H or any
other size) is read off the tensor shapes, so no model name has to be given.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch
from transformers import SamConfig, SamModel

from vlmsam.errors import first_line, CheckpointError

META_SUFFIXES = (".pth", ".pt", ".bin")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

# Meta name -> transformers name, applied in order to every key (regular expressions).
_RENAMES = [
    (r"^image_encoder\.", "vision_encoder."),
    (r"\.blocks\.", ".layers."),
    (r"patch_embed\.proj\.", "patch_embed.projection."),
    (r"neck\.0\.", "neck.conv1."),
    (r"neck\.1\.", "neck.layer_norm1."),
    (r"neck\.2\.", "neck.conv2."),
    (r"neck\.3\.", "neck.layer_norm2."),
    (r"\.norm(\d|_final_attn)\.", r".layer_norm\1."),
    (r"output_upscaling\.0\.", "upscale_conv1."),
    (r"output_upscaling\.1\.", "upscale_layer_norm."),
    (r"output_upscaling\.3\.", "upscale_conv2."),
    (r"mask_downscaling\.0\.", "mask_embed.conv1."),
    (r"mask_downscaling\.1\.", "mask_embed.layer_norm1."),
    (r"mask_downscaling\.3\.", "mask_embed.conv2."),
    (r"mask_downscaling\.4\.", "mask_embed.layer_norm2."),
    (r"mask_downscaling\.6\.", "mask_embed.conv3."),
    (r"prompt_encoder\.point_embeddings\.", "prompt_encoder.point_embed."),
    (r"pe_layer\.positional_encoding_gaussian_matrix$", "shared_embedding.positional_embedding"),
]
# Meta's MLP heads are ``layers.{0..d-1}``; transformers calls the first and last ``proj_in`` and
# ``proj_out`` and the ones between ``layers.{0..d-3}``.
_MLP_HEAD = re.compile(r"^(mask_decoder\.(?:iou_prediction_head|output_hypernetworks_mlps\.\d+))\.layers\.(\d+)\.(.*)$")


def _is_meta_layout(state_dict: dict) -> bool:
    return any(k.startswith("image_encoder.") for k in state_dict) and "image_encoder.pos_embed" in state_dict


def convert_meta_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a ``segment-anything`` state dict to the transformers ``SamModel`` layout."""
    depth: dict[str, int] = {}
    for key in state_dict:
        m = _MLP_HEAD.match(key)
        if m:
            depth[m.group(1)] = max(depth.get(m.group(1), 0), int(m.group(2)) + 1)
    out = {}
    for key, value in state_dict.items():
        if key in ("pixel_mean", "pixel_std"):  # constants of the preprocessing, not weights
            continue
        m = _MLP_HEAD.match(key)
        if m:
            head, i, rest = m.group(1), int(m.group(2)), m.group(3)
            name = "proj_in" if i == 0 else "proj_out" if i == depth[head] - 1 else f"layers.{i - 1}"
            key = f"{head}.{name}.{rest}"
        for pattern, repl in _RENAMES:
            key = re.sub(pattern, repl, key)
        out[key] = value
    pe = out.get("prompt_encoder.shared_embedding.positional_embedding")
    if pe is not None:  # transformers keeps a second copy for the image-wide positional encoding
        out["shared_image_embedding.positional_embedding"] = pe
    return out


def sam_config_from_meta_state_dict(state_dict: dict[str, torch.Tensor]) -> SamConfig:
    """Read the architecture off the shapes of a Meta-layout state dict (ViT-B/L/H or custom)."""
    sd = state_dict
    try:
        patch = sd["image_encoder.patch_embed.proj.weight"]
        hidden, patch_size = patch.shape[0], patch.shape[2]
        grid = sd["image_encoder.pos_embed"].shape[1]
        n_layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("image_encoder.blocks."))
        rel = [sd[f"image_encoder.blocks.{i}.attn.rel_pos_h"] for i in range(n_layers)]
        head_dim = rel[0].shape[1]
        # Global-attention blocks span the whole grid (2*grid-1 relative positions); windowed ones
        # span a window (2*window-1).
        global_idx = [i for i, r in enumerate(rel) if r.shape[0] == 2 * grid - 1]
        windowed = [r.shape[0] for r in rel if r.shape[0] != 2 * grid - 1]
        window = (windowed[0] + 1) // 2 if windowed else 14
        out_channels = sd["image_encoder.neck.0.weight"].shape[0]
        prompt_hidden = sd["prompt_encoder.no_mask_embed.weight"].shape[1]
        decoder_layers = 1 + max(
            int(k.split(".")[3]) for k in sd if k.startswith("mask_decoder.transformer.layers.")
        )
        vision = dict(
            hidden_size=hidden,
            output_channels=out_channels,
            num_hidden_layers=n_layers,
            num_attention_heads=hidden // head_dim,
            image_size=grid * patch_size,
            patch_size=patch_size,
            window_size=window,
            global_attn_indexes=global_idx,
            mlp_dim=sd["image_encoder.blocks.0.mlp.lin1.weight"].shape[0],
            num_pos_feats=sd["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"].shape[1],
        )
        prompt = dict(
            hidden_size=prompt_hidden,
            image_size=grid * patch_size,
            patch_size=patch_size,
            mask_input_channels=sd["prompt_encoder.mask_downscaling.3.weight"].shape[0],
        )
        decoder = dict(
            hidden_size=prompt_hidden,
            num_hidden_layers=decoder_layers,
            mlp_dim=sd["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0],
            num_multimask_outputs=sd["mask_decoder.mask_tokens.weight"].shape[0] - 1,
            iou_head_hidden_dim=sd["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0],
            attention_downsample_rate=prompt_hidden
            // sd["mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.weight"].shape[0],
        )
    except (KeyError, IndexError, ValueError, AttributeError) as e:
        raise CheckpointError(f"not a Segment Anything checkpoint: expected tensor {e} is missing or malformed") from None
    return SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)


def _torch_load(path: Path) -> dict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch wraps the real reason in a long explanation; keep the reason alone.
        reason = str(e).split("WeightsUnpickler error:", 1)[-1].strip().splitlines()[0].strip()
        if "Unsupported global" in reason:
            culprit = reason.split("GLOBAL", 1)[-1].split(" was not")[0].strip()
            raise CheckpointError(
                f"{path}: refused to load: the file would run pickled code ({culprit}) to rebuild its "
                "objects. Only a plain state dict of tensors is accepted; re-save the weights from a "
                "trusted copy, or convert them to safetensors."
            ) from None
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({reason})") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
        # text or random bytes can drive the restricted unpickler into any of these
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {first_line(e)})") from None
    for wrapper in ("model", "state_dict"):  # fine-tuning repos often nest the weights
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors, found {type(obj).__name__}")
    return obj


def _load_strict(model: SamModel, state_dict: dict, source: str) -> None:
    result = model.load_state_dict(state_dict, strict=False)
    problems = []
    if result.missing_keys:
        problems.append(f"missing {len(result.missing_keys)} keys ({_preview(result.missing_keys)})")
    if result.unexpected_keys:
        problems.append(f"unexpected {len(result.unexpected_keys)} keys ({_preview(result.unexpected_keys)})")
    if problems:
        raise CheckpointError(f"{source}: does not match the SAM architecture: " + "; ".join(problems))


def _preview(keys: list[str], n: int = 5) -> str:
    return ", ".join(keys[:n]) + (f", ... {len(keys) - n} more" if len(keys) > n else "")


def load_meta_checkpoint(path: str | Path) -> SamModel:
    """Build a ``SamModel`` from one of Meta's ``.pth`` files (or any SAM state dict file)."""
    path = Path(path)
    state_dict = _torch_load(path)
    if not _is_meta_layout(state_dict):
        if "vision_encoder.pos_embed" in state_dict:
            raise CheckpointError(
                f"{path}: holds weights in the transformers layout; save them with "
                "SamModel.save_pretrained and pass that directory instead"
            )
        raise CheckpointError(
            f"{path}: not a Segment Anything checkpoint (no image_encoder.* weights; "
            f"found e.g. {_preview(list(state_dict), 3) or 'nothing'})"
        )
    config = sam_config_from_meta_state_dict(state_dict)
    with torch.device("meta"):
        model = SamModel(config)
    model = model.to_empty(device="cpu")
    _load_strict(model, convert_meta_state_dict(state_dict), str(path))
    return model.eval()


def load_sam_model(name_or_path: str | Path, *, device=None, dtype: torch.dtype | None = None) -> SamModel:
    """Load SAM from a Meta ``.pth`` file, a transformers directory, or a hub id.

    Raises:
        CheckpointError: a missing path, a file that is not a SAM checkpoint, or weights that do
            not fit the architecture (the missing and unexpected keys are listed).
    """
    source = str(name_or_path)
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix not in META_SUFFIXES:
            raise CheckpointError(
                f"{path}: expected a Meta .pth checkpoint or a transformers model directory "
                "(pass the directory that holds config.json, not a file inside it)"
            )
        model = load_meta_checkpoint(path)
    elif path.is_dir():
        model = _from_pretrained(str(path), local=True)
    elif _HUB_ID.match(source) and not source.endswith(META_SUFFIXES):
        from vlmsam.hub import check_available

        check_available(source, "SAM")
        model = _from_pretrained(source, local=False)
    else:
        raise CheckpointError(f"{source}: no such file or directory (give a .pth file, a model directory or a hub id)")
    if dtype is not None or device is not None:
        model = model.to(device=device, dtype=dtype)
    return model.eval()


def _from_pretrained(source: str, *, local: bool) -> SamModel:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source, local_files_only=local)
    except (OSError, ValueError) as e:
        where = "directory" if local else "hub id (is the network reachable? otherwise pass a local path)"
        raise CheckpointError(f"{source}: could not read a model config from this {where}: {first_line(e)}") from None
    if config.model_type != "sam":
        hint = ("; SAM 2 and SAM 3 work where a design prompts SAM with boxes or points (box_prompt, proposal_select, "
                "grounded, gsam), not as the [SEG] design's trained decoder") if config.model_type.startswith(("sam2", "sam3")) else ""
        raise CheckpointError(f"{source}: is a '{config.model_type}' checkpoint, not a Segment Anything (sam) model{hint}")
    try:
        model, info = SamModel.from_pretrained(source, local_files_only=local, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{source}: could not load the SAM weights: {first_line(e)}") from None
    problems = [f"{k} {len(v)} keys ({_preview(sorted(v))})" for k, v in info.items() if k in ("missing_keys", "unexpected_keys") and v]
    mismatched = info.get("mismatched_keys") or []
    if mismatched:
        problems.append(f"mismatched shapes for {len(mismatched)} keys ({_preview([str(m[0]) for m in mismatched])})")
    if problems:
        raise CheckpointError(f"{source}: does not match its SAM config: " + "; ".join(problems))
    return model


def save_converted(model: SamModel, out_dir: str | Path) -> Path:
    """Save a converted model (safetensors + config) and its preprocessing config to ``out_dir``."""
    from vlmsam.sam.preprocess import build_image_processor

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    build_image_processor(model.config).save_pretrained(out)
    return out
