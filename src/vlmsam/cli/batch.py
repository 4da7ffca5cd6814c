"""The batch side of ``vlmsam segment``: sources and ``--requests`` lines -> jobs, one output stem per
job (unique in the whole batch), and ``predictions.jsonl`` kept as a journal: a line appended and
synced as each answer is written, so a killed run loses nothing it finished and ``--resume`` picks
up where it stopped."""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

from vlmsam.errors import VlmsamError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
PREDICTIONS = "predictions.jsonl"
REQUESTS_WHAT = 'a JSONL file of {"image": PATH, "request": TEXT} lines'

Job = tuple[str, str]  # (image source, request)


def expand(source: str) -> list[str]:
    """A path, folder (its images, sorted), glob or URL -> image sources. A file that exists is itself,
    even when its name holds glob characters (``img/glob[1].jpg``)."""
    from vlmsam.io.images import is_url

    if is_url(source):
        return [source]
    path = Path(source)
    if os.path.isdir(path):  # False, not an error, for a name too long to exist
        try:
            return sorted(str(p) for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        except OSError as exc:
            from vlmsam.io.result_set import os_error_text

            raise VlmsamError(f"{source}: the folder cannot be listed ({os_error_text(exc)})") from None
    if os.path.lexists(source):
        return [source]
    if any(ch in source for ch in "*?["):
        return sorted(glob.glob(source))
    return [source]


def read_requests(path: str | os.PathLike) -> list[Job]:
    """The ``(image, request)`` jobs of a ``--requests`` file, in order; anything else is one
    :class:`VlmsamError` line naming ``file:line``."""
    from vlmsam.engine.contract import check_request
    from vlmsam.io.files import loads, read_user_bytes
    from vlmsam.io.text import clean_text

    data = read_user_bytes(path, REQUESTS_WHAT)
    jobs = []
    for k, raw in enumerate(data.split(b"\n"), 1):  # only "\n" ends a line: U+2028 may sit inside a JSON string
        if not raw.strip():
            continue
        try:
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"not UTF-8 text: a bad byte at column {exc.start + 1}") from None
            value = loads(line)
            if not isinstance(value, dict) or "image" not in value or "request" not in value:
                raise ValueError("not an object with image and request")
            image, request = value["image"], value["request"]
            if not isinstance(image, str) or not isinstance(request, str):
                raise ValueError("image and request must be strings")
        except ValueError as exc:
            raise VlmsamError(f'{path}:{k}: expected {{"image": PATH, "request": TEXT}} ({exc})') from None
        try:
            image = clean_text(image, "the image path").strip()
            if not image:
                raise VlmsamError("the image path is empty")
            jobs.append((image, check_request(request)))
        except VlmsamError as exc:
            raise VlmsamError(f"{path}:{k}: {exc}") from None
    if not jobs:
        raise VlmsamError(f"{path}: no requests in it; expected {REQUESTS_WHAT}")
    return jobs


def jobs_from_args(inputs: list[str], requests: str | None) -> list[Job]:
    """``(image source, request)`` pairs, in order: from ``IMAGE ... REQUEST`` or a ``--requests`` file."""
    from vlmsam.engine.contract import check_request

    if requests:
        if inputs:
            raise VlmsamError("give either IMAGE ... REQUEST or --requests FILE.jsonl, not both")
        return read_requests(requests)
    if len(inputs) < 2:
        raise VlmsamError("give at least one IMAGE and a REQUEST (or --requests FILE.jsonl)")
    *sources, request = inputs
    request = check_request(request)
    images = [image for s in sources for image in expand(s)]
    if not images:
        raise VlmsamError(f"no images found in {', '.join(sources)}")
    return [(image, request) for image in images]


def image_stem(source: str) -> str:
    return Path(source.split("?")[0]).stem or "image"


def unique_stems(jobs: list[Job]) -> list[str]:
    """One output stem per job: the image's stem, then ``_2``, ``_3``... until no earlier job has it
    (two requests about one image, one name in two folders, or an image already named ``a_2``: no job
    overwrites another's files). Compared without case, for file systems that ignore it."""
    from vlmsam.io.result_set import MANIFEST

    taken = {Path(MANIFEST).stem.casefold()}  # an image named .vlmsam-written.png must not write the manifest
    out = []
    for image, _ in jobs:
        base = stem = image_stem(image)
        n = 1
        while stem.casefold() in taken:
            n += 1
            stem = f"{base}_{n}"
        taken.add(stem.casefold())
        out.append(stem)
    return out


def check_no_input_in(out_dir: str | os.PathLike, jobs: list[Job]) -> None:
    """Refuse an ``--out`` that holds an input image: outputs go beside nothing of the user's."""
    from vlmsam.io.images import is_url

    try:
        out = Path(out_dir).resolve()
    except (OSError, RuntimeError, ValueError):
        return
    for image, _ in jobs:
        if is_url(image):
            continue
        try:
            parent = Path(image).resolve().parent
        except (OSError, RuntimeError, ValueError):
            continue
        if parent == out:
            raise VlmsamError(f"--out {out_dir} holds the input image {image}; pick another --out for the outputs")


class JournalError(VlmsamError):
    """predictions.jsonl cannot be written: the batch stops (each later image would fail the same way)."""


class Journal:
    """``predictions.jsonl`` in ``out_dir``, a line per answer, appended and synced as each is written.

    ``resume``: keep the complete lines already there (a torn last line is dropped) as :attr:`done`,
    keyed by ``(stem, query)``; otherwise the file starts anew.
    """

    def __init__(self, out_dir: str | os.PathLike, resume: bool):
        self.out = Path(out_dir)
        self.path = self.out / PREDICTIONS
        self.dropped = 0  # lines of an earlier run that could not be read (a torn last line)
        self.done: dict[tuple[str, str], dict] = self._read() if resume else {}
        self.new: dict[tuple[str, str], dict] = {}
        self._file = None
        if not resume and self.out.is_dir():
            from vlmsam.io.result_set import check_ours

            check_ours(self.out, [PREDICTIONS])  # refused now, before a model loads

    def open(self) -> None:
        """Start the file: the kept lines only (a fresh run: none); then append as answers come."""
        from vlmsam.io.result_set import remove_orphans, write_set

        try:
            remove_orphans(self.out)
        except OSError:
            pass  # an --out that cannot be written is reported by the write below
        write_set(self.out, [(PREDICTIONS, self._lines(self.done.values()))], unit=str(self.path))
        try:
            self._file = open(self.path, "ab")
        except OSError as exc:
            raise self._error(exc) from None

    def _read(self) -> dict[tuple[str, str], dict]:
        from vlmsam.io.files import loads, read_user_bytes
        from vlmsam.io.result_set import check_ours

        if not os.path.lexists(self.path):
            return {}
        check_ours(self.out, [PREDICTIONS])
        data = read_user_bytes(self.path, "vlmsam's predictions.jsonl")
        chunks = data.split(b"\n")[:-1]  # what follows the last newline is a torn line
        self.dropped = int(bool(data.split(b"\n")[-1]))
        done = {}
        for chunk in chunks:
            try:
                line = loads(chunk.decode("utf-8"))
                key = (line["stem"], line["query"])
                if not all(isinstance(v, str) for v in key):
                    raise TypeError
            except (ValueError, KeyError, TypeError):
                self.dropped += int(bool(chunk.strip()))
                continue
            done[key] = line
        return done

    @staticmethod
    def _lines(lines) -> bytes:
        return "".join(json.dumps(line) + "\n" for line in lines).encode("utf-8")

    def _error(self, exc: OSError) -> JournalError:
        from vlmsam.io.result_set import os_error_text

        return JournalError(f"{self.path}: {os_error_text(exc)}; the predictions written so far are kept "
                           "(rerun with --resume once this is fixed)")

    def append(self, line: dict) -> None:
        """Add ``line`` (with ``stem`` and ``query``) to the file, durably, before returning."""
        self.new[(line["stem"], line["query"])] = line
        try:
            self._file.write(self._lines([line]))
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            raise self._error(exc) from None

    def finish(self, order: list[tuple[str, str]]) -> None:
        """Rewrite the file in job ``order`` (lines of other jobs, kept by --resume, after them)."""
        from vlmsam.io.result_set import write_set

        self.close()
        every = {**self.done, **self.new}
        ordered = set(order)
        keys = [key for key in order if key in every] + [key for key in every if key not in ordered]
        write_set(self.out, [(PREDICTIONS, self._lines(every[key] for key in keys))], unit=str(self.path))

    def close(self) -> None:
        if self._file is not None and not self._file.closed:
            self._file.close()
