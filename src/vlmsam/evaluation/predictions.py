"""``predictions.jsonl``: one ``{"image": STEM, "query": TEXT, "answer": TEXT, "masks": [COCO RLE]}`` per
request. ``vlmsam score`` reads it (:func:`read_predictions`); ``vlmsam evaluate`` appends to it one
sample at a time, flushed (:class:`PredictionLog`), so a run that is killed keeps what it did and
``--resume`` (:func:`read_done`) takes it back instead of answering those requests again.

Under torchrun rank 0 appends to ``predictions.jsonl`` and rank ``r`` to ``predictions.rank{r}.jsonl``;
at the end rank 0 writes every line, in dataset order, to ``predictions.jsonl`` and removes the others.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict, deque
from pathlib import Path

from vlmsam.errors import VlmsamError
from vlmsam.io.files import loads, read_text, read_user_bytes

FILE = "predictions.jsonl"
LINE = '{"image": STEM, "query": TEXT, "answer": TEXT, "masks": [RLE, ...]}'
WHAT = f"a predictions.jsonl ({LINE} per line)"


def parse_line(text: str) -> tuple[tuple[str, str], dict]:
    """``((image, query), line)`` of one prediction line; ValueError / KeyError / TypeError if it is not one."""
    line = loads(text)
    if not isinstance(line, dict):
        raise TypeError("a line must be a JSON object")
    image, query = line["image"], line["query"]
    if not isinstance(image, (str, int)) or not isinstance(query, str):
        raise TypeError("image and query must be strings")
    masks = line.get("masks", [])
    if not isinstance(masks, list):
        raise TypeError("masks must be a list")
    return (str(image), query), line


def read_predictions(path: Path) -> dict[tuple[str, str], list[dict]]:
    """``(image stem, query)`` -> the prediction lines with that key, in file order."""
    by_key = defaultdict(list)
    for k, text in enumerate(read_text(path, WHAT).splitlines(), 1):
        if not text.strip():
            continue
        try:
            key, line = parse_line(text)
        except (ValueError, KeyError, TypeError) as exc:
            raise VlmsamError(f"{path}:{k}: not a prediction line ({type(exc).__name__}: {exc}); expected {LINE}") from None
        by_key[key].append(line)
    return by_key


def rank_file(out_dir: Path, rank: int) -> Path:
    return Path(out_dir) / (FILE if rank == 0 else f"predictions.rank{rank}.jsonl")


def _complete_lines(path: Path) -> tuple[list[str], int]:
    """The complete lines of a file being appended to, and the byte length they take: a last line
    without its newline (the process was killed while writing it) is left out."""
    data = read_user_bytes(path, WHAT)
    end = data.rfind(b"\n") + 1  # bytes: a kill can split a multi-byte character too
    try:
        return data[:end].decode("utf-8").splitlines(), end
    except UnicodeDecodeError as exc:
        raise VlmsamError(f"{path}: not UTF-8 text (bad byte at {exc.start}); remove it or run without --resume") from None


def read_done(out_dir: Path) -> dict[tuple[str, str], deque]:
    """The predictions an interrupted ``evaluate`` already wrote in ``out_dir`` (every rank's file),
    by ``(image stem, query)``. A partial last line is dropped; any other unreadable line is an error."""
    done: dict[tuple[str, str], deque] = defaultdict(deque)
    paths = [Path(out_dir) / FILE, *sorted(Path(out_dir).glob("predictions.rank*.jsonl"))]
    for path in paths:
        if not path.is_file():
            continue
        lines, _ = _complete_lines(path)
        for k, text in enumerate(lines, 1):
            if not text.strip():
                continue
            try:
                key, line = parse_line(text)
            except (ValueError, KeyError, TypeError) as exc:
                raise VlmsamError(f"{path}:{k}: not a prediction line ({type(exc).__name__}: {exc}); remove the file "
                                  "or run without --resume") from None
            done[key].append(line)
    return done


def _is_rank_file(name: str) -> bool:
    middle = name[len("predictions.rank"):-len(".jsonl")] if name.startswith("predictions.rank") and name.endswith(".jsonl") else ""
    return middle.isdigit()


class PredictionLog:
    """This rank's predictions file, appended one sample at a time and synced: a kill loses at most
    the sample being written, whose partial line ``--resume`` drops. The file is started through
    :func:`vlmsam.io.result_set.write_set` (never over a file vlmsam did not write)."""

    def __init__(self, out_dir: Path, rank: int, world_size: int, resume: bool):
        from vlmsam.io.result_set import write_set

        self.path = rank_file(out_dir, rank)
        keep = b""
        if resume and self.path.is_file():
            _, end = _complete_lines(self.path)
            keep = read_user_bytes(self.path, WHAT)[:end]
        # Another run's extra ranks' files would be taken back by a later --resume: they go (rank 0, a new run).
        stale = (lambda n: _is_rank_file(n) and int(n[len("predictions.rank"):-len(".jsonl")]) >= world_size) \
            if rank == 0 and not resume else None
        write_set(out_dir, [(self.path.name, keep)], stale=stale, unit=str(self.path))
        try:
            self.file = open(self.path, "ab")
        except OSError as exc:
            raise VlmsamError(f"{self.path}: cannot be appended to ({exc.strerror})") from None

    def append(self, lines: list[dict]) -> None:
        if lines:
            self.file.write("".join(json.dumps(x) + "\n" for x in lines).encode("utf-8"))
            self.file.flush()
            os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


def finish(out_dir: Path, lines: list[dict]) -> None:
    """Every rank's lines, in dataset order, as ``predictions.jsonl`` (written whole, then renamed);
    the per-rank files go."""
    from vlmsam.io.result_set import write_set

    write_set(out_dir, [(FILE, "".join(json.dumps(x) + "\n" for x in lines).encode("utf-8"))], stale=_is_rank_file,
              unit=str(Path(out_dir) / FILE))
