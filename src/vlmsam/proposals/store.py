"""SAM proposals precomputed at dataset scale: shards that stream, an index, O(1) reads, resumable.

Layout of ``OUT``::

    OUT/shards/r{rank}-{n:06d}.jsonl        one line per image: {"image", "size", "source_size", "proposals"}
    OUT/shards/r{rank}-{n:06d}.index.json   {"shard", "bytes", "lines": [[image, offset, length, sha1], ...]}

A shard and its index are written to temporary names and renamed into place (index last), so a
killed run leaves only complete shards; the next run skips their images. Every line carries its
SHA-1 in the index: a truncated or edited shard is found, reported with its path and recomputed,
never silently used. No pickle anywhere: JSON and COCO RLE.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from vlmsam.errors import VlmsamError
from vlmsam.io.files import loads, read_text, read_user_bytes


class ProposalStoreError(VlmsamError):
    """A proposals directory or shard that cannot be used as it is."""


def _digest(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def write_shard(shards_dir: Path, name: str, records: list[dict]) -> Path:
    """Write one shard and its index atomically; returns the shard's path."""
    shards_dir.mkdir(parents=True, exist_ok=True)
    lines, offset, data = [], 0, bytearray()
    for record in records:
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        lines.append([record["image"], offset, len(line), _digest(line)])
        data += line
        offset += len(line)
    shard = shards_dir / f"{name}.jsonl"
    index = shards_dir / f"{name}.index.json"
    for path, payload in ((shard, bytes(data)), (index, json.dumps({"shard": shard.name, "bytes": len(data), "lines": lines}).encode())):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(payload)
        os.replace(tmp, path)
    return shard


def verify_shard(index_path: Path) -> tuple[list, str]:
    """``(lines, problem)``: the index's lines, and "" or why the shard cannot be used."""
    try:
        index = loads(read_text(index_path, "a proposals shard index"))
        shard = index_path.with_name(index["shard"])
        lines = index["lines"]
        if not isinstance(lines, list) or not isinstance(index["bytes"], int) or \
                not all(isinstance(x, list) and len(x) == 4 and isinstance(x[1], int) and isinstance(x[2], int) for x in lines):
            raise TypeError("lines must be a list of [image, offset, length, digest] and bytes a number")
    except (VlmsamError, ValueError, KeyError, TypeError) as exc:
        return [], f"unreadable index ({type(exc).__name__})"
    if not shard.is_file():
        return [], "its shard file is missing"
    try:
        data = read_user_bytes(shard, "a proposals shard")
    except VlmsamError as exc:
        return [], f"its shard file cannot be read ({exc})"
    if len(data) != index["bytes"]:
        return [], f"{len(data)} bytes where the index says {index['bytes']} (truncated?)"
    for image, offset, length, digest in lines:
        if _digest(data[offset:offset + length]) != digest:
            return [], f"the record of {image} does not match its checksum"
    return lines, ""


@dataclass
class ProposalSet:
    """The proposals of one image, largest first: ``masks (K, H, W) bool`` at ``size`` (the size the
    proposals were computed at), plus SAM's scores."""

    image: str
    size: tuple[int, int]
    source_size: tuple[int, int]
    masks: np.ndarray
    predicted_iou: np.ndarray
    stability_score: np.ndarray
    boxes: np.ndarray  # (K, 4) XYWH at ``size``


class ProposalReader:
    """``reader[image]`` -> :class:`ProposalSet` (top ``k`` by area), one seek and one read per image."""

    def __init__(self, root: str | Path, k: int = 50):
        self.root = Path(root)
        self.k = k
        shards = self.root / "shards"
        if not shards.is_dir():
            raise ProposalStoreError(f"{self.root}: no proposals here (run `vlmsam proposals --out {self.root}` first)")
        self.where: dict[str, tuple[Path, int, int, str]] = {}
        for index_path in sorted(shards.glob("*.index.json")):
            try:
                index = loads(read_text(index_path, "a proposals shard index"))
                for image, offset, length, digest in index["lines"]:
                    self.where[image] = (index_path.with_name(index["shard"]), offset, length, digest)
            except (VlmsamError, ValueError, KeyError, TypeError) as exc:
                raise ProposalStoreError(f"{index_path}: unreadable index ({type(exc).__name__}); rerun `vlmsam proposals` "
                                         "to recompute it") from None

    def __contains__(self, image: str) -> bool:
        return image in self.where

    def __len__(self) -> int:
        return len(self.where)

    def record(self, image: str) -> dict:
        if image not in self.where:
            raise KeyError(image)
        shard, offset, length, digest = self.where[image]
        with open(shard, "rb") as f:
            f.seek(offset)
            line = f.read(length)
        if len(line) != length or _digest(line) != digest:
            raise ProposalStoreError(f"{shard}: the record of {image} is truncated or corrupt; rerun `vlmsam proposals` "
                                     "to recompute the shard")
        return loads(line)  # checksummed above; still parsed with the bounded reader

    def __getitem__(self, image: str) -> ProposalSet:
        record = self.record(image)
        props = record["proposals"][: self.k]
        h, w = record["size"]
        masks = mask_utils.decode([p["segmentation"] for p in props]).transpose(2, 0, 1).astype(bool) if props \
            else np.zeros((0, h, w), bool)
        return ProposalSet(image, (h, w), tuple(record["source_size"]), masks,
                           np.array([p["predicted_iou"] for p in props], np.float32),
                           np.array([p["stability_score"] for p in props], np.float32),
                           np.array([p["bbox"] for p in props], np.float32).reshape(-1, 4))
