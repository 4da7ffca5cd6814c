"""A disk cache of SAM image embeddings for runs whose SAM image encoder is frozen.

With a frozen encoder the embedding of an image never changes, yet a plain training loop
recomputes it for every sample, and SAM's ViT is the most expensive part of a LoRA step. The
cache computes each training image's embedding once (sharded across ranks, resumable: files
already there are kept) and training reads it back instead of running the encoder. The seg_token design
fills it before the first step (its ``TrainingSpec.prepare``) and hands it to its model.

Entries are ``<sha1>.safetensors`` keyed by the image file's resolved path, size and modification
time (a changed file gets a new entry) and hold the embedding with the image's original and
resized sizes.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from vlmsam.io.images import load_image
from vlmsam.sam.backend import ImageEmbedding


class SamEmbeddingCache:
    """Args:
        root: the cache directory (created if missing).
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.hits = self.misses = 0

    @staticmethod
    def key(image_path) -> str:
        p = Path(image_path).resolve()
        st = p.stat()
        return hashlib.sha1(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()

    def file(self, image_path) -> Path:
        return self.root / f"{self.key(image_path)}.safetensors"

    def get(self, image_path) -> ImageEmbedding | None:
        f = self.file(image_path)
        if not f.is_file():
            self.misses += 1
            return None
        data = load_file(str(f))
        self.hits += 1
        return ImageEmbedding(data["embedding"], tuple(data["original_size"].tolist()), tuple(data["input_size"].tolist()))

    def put(self, image_path, emb: ImageEmbedding) -> None:
        f = self.file(image_path)
        tmp = f.with_suffix(f".tmp{os.getpid()}")
        save_file({"embedding": emb.embeddings.detach().cpu().contiguous(),
                   "original_size": torch.tensor(emb.original_size), "input_size": torch.tensor(emb.input_size)}, str(tmp))
        os.replace(tmp, f)  # a killed run leaves no half-written entry under the final name

    def fill(self, sam_backend, image_paths: list[Path], rank: int = 0, world_size: int = 1, progress: bool = True) -> int:
        """Compute the missing entries of this rank's share of ``image_paths``; returns how many."""
        todo = [p for k, p in enumerate(sorted(set(map(str, image_paths)))) if k % world_size == rank]
        todo = [p for p in todo if Path(p).is_file() and not self.file(p).is_file()]
        for p in tqdm(todo, desc="SAM embedding cache", unit="image", disable=not progress or rank != 0):
            try:
                image = load_image(p)
            except Exception:
                continue  # a bad image is reported (and skipped) by the training loop itself
            self.put(p, sam_backend.encode(image))
        return len(todo)
