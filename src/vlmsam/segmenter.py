"""One entry point for every segmenter: ``load_segmenter``.

>>> from vlmsam import load_segmenter
>>> seg = load_segmenter()                      # the bundled vlmsam-tiny (synthetic shape scenes only)
>>> seg.set_image("scene.jpg")
>>> result = seg.segment("the largest triangle")    # SegmentationResult: masks, boxes, answer text
>>> seg("other.jpg", "all the stars")            # set_image + segment in one call

Real models: ``load_segmenter("runs/exp1/checkpoints/step_005000")`` (a trained ``[SEG]`` checkpoint)
or ``load_segmenter(vlm="Qwen/Qwen2.5-VL-7B-Instruct", sam="facebook/sam-vit-huge")`` (base models
by hub id or path; the ``[SEG]`` projection is then untrained, which is only useful to start training).
"""

from __future__ import annotations

from pathlib import Path

from vlmsam.errors import CheckpointError, PromptError
from vlmsam.io.images import ImageSource
from vlmsam.result import SegmentationResult

SEGMENTERS = ("seg_token",)
MAX_REQUEST_CHARS = 2000


def check_request(request: str) -> str:
    """The request, stripped; empty or oversized requests are a :class:`PromptError`."""
    if not isinstance(request, str) or not request.strip():
        raise PromptError("the request is empty: say what to segment, e.g. \"the red circle\"")
    if len(request) > MAX_REQUEST_CHARS:
        raise PromptError(f"the request has {len(request):,} characters; at most {MAX_REQUEST_CHARS:,} are accepted")
    return request.strip()


class Segmenter:
    """A loaded segmenter: set an image once, then ask as many requests as you like about it."""

    def __init__(self, model, name: str, max_new_tokens: int = 128):
        self.model = model
        self.name = name
        self.max_new_tokens = max_new_tokens

    def set_image(self, image: ImageSource) -> None:
        self.model.set_image(image)

    def segment(self, request: str, image: ImageSource | None = None) -> SegmentationResult:
        request = check_request(request)
        if image is not None:
            self.set_image(image)
        return self.model.segment(self.prompt(request), max_new_tokens=self.max_new_tokens)

    def __call__(self, image: ImageSource, request: str) -> SegmentationResult:
        return self.segment(request, image=image)

    @staticmethod
    def prompt(request: str) -> str:
        """Requests are asked as the models were trained and evaluated: a sentence (ends with ``?``
        or ``.`` and has several words) gets the long prompt, a phrase the short one."""
        from vlmsam.data import prompts

        if "segmentation mask" in request.lower():
            return request
        is_sentence = request.rstrip().endswith(("?", ".", "!")) and len(request.split()) > 4
        return prompts.eval_question(request.rstrip(), is_sentence)


def load_segmenter(name_or_path: str | Path | None = None, segmenter: str = "seg_token", *, vlm: str | None = None,
                   sam: str | None = None, device=None, max_new_tokens: int = 128) -> Segmenter:
    """Load a segmenter. With no arguments: the bundled ``vlmsam-tiny``."""
    from vlmsam.default_model import DEFAULT_MODEL_DIR, DEFAULT_MODEL_NAME

    if segmenter not in SEGMENTERS:
        raise CheckpointError(f"unknown segmenter '{segmenter}'; available: {', '.join(SEGMENTERS)}")
    from vlmsam.seg_token import SegTokenConfig, SegTokenModel

    if vlm or sam:
        if name_or_path:
            raise CheckpointError("name either a [SEG] checkpoint or base --vlm/--sam models, not both")
        config = SegTokenConfig(vlm=vlm or SegTokenConfig.vlm, sam=sam or SegTokenConfig.sam)
        model = SegTokenModel.build(config).eval()
        label = f"{config.vlm} + {config.sam}"
    else:
        if name_or_path in (None, "", DEFAULT_MODEL_NAME):
            path = DEFAULT_MODEL_DIR
            if not (path / "vlmsam_config.json").is_file():
                raise CheckpointError(f"{path}: the bundled vlmsam-tiny is missing from this installation; "
                                      "`make tiny-model` rebuilds it")
        else:
            path = Path(name_or_path)
            if not path.exists():
                raise CheckpointError(f"{path}: no such model directory (give a trained [SEG] checkpoint, or base "
                                      "models with --vlm/--sam)")
            if not path.is_dir():
                raise CheckpointError(f"{path}: is a file; a [SEG] model is a directory with vlmsam_config.json "
                                      "(a SAM checkpoint goes to --sam)")
        model = SegTokenModel.from_pretrained(path)
        label = DEFAULT_MODEL_NAME if path == DEFAULT_MODEL_DIR else str(path)
    if device is not None:
        model.to(device)
    return Segmenter(model, label, max_new_tokens)
