"""Peak resident memory of a bf16 VLM load, against the bf16 weight bytes.

A Qwen2.5-VL-3B-shaped checkpoint (36 text layers 2048 wide, 32 vision blocks 1280 wide; random
weights, saved in bf16 safetensors) is written once to a temporary directory; a fresh process then
loads it with ``VlmRuntime.load(path, dtype="bf16")`` and reports its peak resident set size above
what it held after importing torch and transformers. A load that materialised an fp32 copy would
need about 3x the bf16 bytes. Needs about 8 GB of memory and disk; takes a few minutes on 2 cores.

Last line: ``load_peak_over_weights=<ratio>`` (target <= 1.3).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import torch, transformers
from vlmsam.vlm.runtime import VlmRuntime
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
vlm = VlmRuntime.load(sys.argv[1], dtype="bf16", device="cpu")
seconds = time.perf_counter() - t0
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
# Weights may still be lazily mapped from the file: read one element per 4 KiB page of every
# tensor, so the peak counts every weight byte as resident (what a first forward pass does).
for p in vlm.model.parameters():
    flat = p.detach().reshape(-1)
    flat[:: max(1, 4096 // p.element_size())].sum()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
weights = sum(p.numel() * p.element_size() for p in vlm.model.parameters())
dtypes = sorted({str(p.dtype) for p in vlm.model.parameters()})
print(json.dumps({"base_kb": base, "loaded_kb": loaded, "peak_kb": peak, "weight_bytes": weights, "seconds": seconds, "dtypes": dtypes}))
"""


def write_checkpoint(root: Path, text_layers: int, vision_layers: int) -> None:
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    sys.path.insert(0, str(Path(__file__).parent))
    from realsize import qwen2_5_vl_3b_config

    from vlmsam.vlm.tiny import build_tokenizer

    tok = build_tokenizer()
    torch.set_default_dtype(torch.bfloat16)  # build straight in bf16: the writer needs no fp32 copy either
    model = Qwen2_5_VLForConditionalGeneration(qwen2_5_vl_3b_config(tok, text_layers, vision_layers))
    model.save_pretrained(root)
    tok.save_pretrained(root)
    Qwen2VLImageProcessorPil().save_pretrained(root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text-layers", type=int, default=36)
    parser.add_argument("--vision-layers", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "qwen2_5_vl_3b_shape"
        subprocess.run([sys.executable, "-c", f"import sys; sys.argv=['x']; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
                        f"from bench_load import write_checkpoint; from pathlib import Path; "
                        f"write_checkpoint(Path({str(path)!r}), {args.text_layers}, {args.vision_layers})"], check=True)
        out = subprocess.run([sys.executable, "-c", CHILD, str(path)], check=True, capture_output=True, text=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    grown = (r["peak_kb"] - r["base_kb"]) * 1024
    print(f"bf16 weights: {r['weight_bytes'] / 2**30:.2f} GiB ({r['dtypes']}); load took {r['seconds']:.1f} s; "
          f"resident set grew by {(r['loaded_kb'] - r['base_kb']) / 2**20:.2f} GiB during the load, "
          f"{grown / 2**30:.2f} GiB at the peak once every weight page was read")
    print(f"load_peak_over_weights={grown / r['weight_bytes']:.2f}")


if __name__ == "__main__":
    main()
