"""The bundled defaults as installed: each file once, and each evaluation filed where it belongs.

A bundle whose part (its VLM, SAM, ...) is byte for byte another bundle's names that part by a path
relative to itself (``"vlm": "../vlmsam-tiny/vlm"`` in its ``vlmsam_config.json``); every design's
loader resolves a part relative to the bundle, so the wheel carries the 7 MB VLM once, not twice.
``vlmsam-tiny`` is the base the others are made from (and vlmsam-tiny-grounding may name vlmsam-tiny-llmseg's
point-trained SAM); replacing a bundle first gives the bundles that share its parts their own copies again
(:func:`unshare_dependents`), so no bundle changes under another.

A bundle keeps its ``eval/metrics.json`` (with ``provenance.json``, its model card); an evaluation's
``predictions.jsonl`` and ``summary.png`` are the record of that evaluation, kept in git under
``docs/bundled/<bundle>/`` and not installed (:func:`file_evaluation`)."""

from __future__ import annotations

import filecmp
import json
import os
import shutil
from pathlib import Path

from vlmsam.engine.registry import CONFIG_NAME, DEFAULT_MODEL_DIR

WEIGHTS_DIR = DEFAULT_MODEL_DIR.parent
EVAL_RECORDS = Path(__file__).resolve().parent.parent / "docs" / "bundled"
PARTS = ("vlm", "sam", "dinov2")


def _files(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*") if p.is_file()}


def _same(a: Path, b: Path) -> bool:
    return b.is_file() and filecmp.cmp(a, b, shallow=False)


def can_share(bundle: Path, part: str, base: Path) -> bool:
    """``bundle/part`` holds every file of ``base/part`` byte for byte, and anything more it holds is a
    copy of the same file at the bundle's root (the processor, which the loaders of bundles that carry
    one at their root read from there)."""
    ours, theirs = bundle / part, base / part
    if not (ours.is_dir() and theirs.is_dir()):
        return False
    mine, base_files = _files(ours), _files(theirs)
    return (all(_same(theirs / f, ours / f) for f in base_files)
            and all(_same(ours / f, bundle / f) for f in mine - base_files))


def share_parts(bundle: str | Path, parts: tuple[str, ...] = PARTS, base: str | Path = DEFAULT_MODEL_DIR) -> list[str]:
    """Replace each of ``parts`` that :func:`can_share` with ``base``'s by a relative reference in the
    bundle's config; returns the parts shared (the others are left as they are, and said)."""
    bundle, base = Path(bundle), Path(base)
    config = json.loads((bundle / CONFIG_NAME).read_text())
    shared = []
    for part in parts:
        if config.get(part) != part or not can_share(bundle, part, base):
            print(f"{bundle.name}: {part} kept (not the same as {base.name}'s)")
            continue
        shutil.rmtree(bundle / part)
        config[part] = os.path.relpath(base / part, bundle)
        shared.append(part)
    (bundle / CONFIG_NAME).write_text(json.dumps(config, indent=2))
    return shared


def unshare(bundle: str | Path, named_from: str | Path | None = None) -> list[str]:
    """Give ``bundle`` its own copy of each part it names in another bundle; returns those parts.
    ``named_from``: where the relative names were written (a bundle copied elsewhere names them from there)."""
    bundle = Path(bundle)
    base = Path(named_from) if named_from is not None else bundle
    config = json.loads((bundle / CONFIG_NAME).read_text())
    copied = []
    for part in PARTS:
        named = config.get(part)
        if isinstance(named, str) and named.startswith(".."):
            shutil.copytree((base / named).resolve(), bundle / part)
            config[part] = part
            copied.append(part)
    (bundle / CONFIG_NAME).write_text(json.dumps(config, indent=2))
    return copied


def standalone_copy(bundle: str | Path, out: str | Path) -> Path:
    """``bundle`` copied to ``out`` (its evaluation left behind) with every part it shares with another bundle
    copied in: a starting point for a run that will not move with its source."""
    bundle, out = Path(bundle), Path(out)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(bundle, out, ignore=shutil.ignore_patterns("eval"))
    unshare(out, named_from=bundle)
    return out


def unshare_dependents(base: str | Path) -> list[Path]:
    """Before ``base`` is rebuilt: every sibling bundle that names a part of it gets its own copy."""
    base = Path(base).resolve()
    changed = []
    for sibling in sorted(p for p in base.parent.iterdir() if p.resolve() != base and (p / CONFIG_NAME).is_file()):
        config = json.loads((sibling / CONFIG_NAME).read_text())
        if any(isinstance(config.get(part), str) and (sibling / config[part]).resolve().parent == base for part in PARTS):
            unshare(sibling)
            changed.append(sibling)
    return changed


def file_evaluation(eval_dir: str | Path, bundle: str | Path, records: str | Path = EVAL_RECORDS, split: str = "") -> None:
    """``vlmsam evaluate --out eval_dir`` of ``bundle``: metrics.json into the bundle's ``eval/``,
    predictions.jsonl and summary.png into ``records/<bundle name>/``. ``split`` names a wording split of
    the test scenes (``rich``, ``heldout``): ``eval/metrics-<split>.json`` and ``records/<bundle>/<split>/``."""
    eval_dir, bundle = Path(eval_dir), Path(bundle)
    (bundle / "eval").mkdir(parents=True, exist_ok=True)
    shutil.copy(eval_dir / "metrics.json", bundle / "eval" / (f"metrics-{split}.json" if split else "metrics.json"))
    record = Path(records) / bundle.name / split
    record.mkdir(parents=True, exist_ok=True)
    for name in ("predictions.jsonl", "summary.png"):
        shutil.copy(eval_dir / name, record / name)


def giou(eval_dir: str | Path, name: str = "metrics.json", missing: float | None = None) -> float:
    """The gIoU an evaluation wrote (``eval_dir/name``); ``missing`` where there is none (else the file must exist)."""
    path = Path(eval_dir) / name
    return missing if missing is not None and not path.is_file() else float(json.loads(path.read_text())["giou"])


def beats_installed(eval_prefix: str | Path, bundle: str | Path, splits: tuple[str, ...] = ("original", "rich", "heldout")) -> bool:
    """Whether a new build's evaluations (``<eval_prefix>-<split>/metrics.json``) sum to a higher gIoU over the
    wording splits than the installed ``bundle``'s own (``eval/metrics[-split].json``); a split the bundle has no
    figure for counts as 0. Printed either way, so a stage that does not help leaves the bundle as it is."""
    new = [giou(f"{eval_prefix}-{s}") for s in splits]  # the new build must have every figure
    old = [giou(Path(bundle) / "eval", "metrics.json" if s == "original" else f"metrics-{s}.json", missing=0.0) for s in splits]
    better = sum(new) > sum(old)
    print(f"{' / '.join(splits)}: new {' / '.join(f'{g:.3f}' for g in new)}, installed {' / '.join(f'{g:.3f}' for g in old)}"
          f" -> {'install' if better else 'the installed bundle stays'}")
    return better


def _check_soup(bundles: list[Path], out: Path, trained: tuple[str, ...]) -> None:
    """Bundles a soup may average: their settings are the same, a part named by a path is the very same folder for
    every bundle and for ``out``, their frozen parts' weights are byte for byte the same, and they hold the same
    trained files (the top-level ``*.safetensors`` and the ``trained`` parts' weights)."""
    first = bundles[0]
    configs = [json.loads((b / CONFIG_NAME).read_text()) for b in bundles]
    for part in PARTS:
        named = {c.get(part) for c in configs}
        if len(named) > 1:
            raise ValueError(f"the bundles name their {part} differently ({sorted(map(str, named))}); soup standalone copies "
                             "(tools.bundles.standalone_copy)")
        path = configs[0].get(part)
        if isinstance(path, str) and path != part:  # shared by a path: one folder from every bundle and from out
            if part in trained:
                raise ValueError(f"{part} is shared by path ({path}); a shared part cannot be one a run trained")
            if len({(b / path).resolve() for b in [*bundles, out]}) > 1:
                raise ValueError(f"{part} is named by a path ({path}) that leads to other folders from {out}; "
                                 "soup standalone copies (tools.bundles.standalone_copy)")
    settings = [{k: v for k, v in c.items() if k not in PARTS} for c in configs]
    for other, setting in zip(bundles[1:], settings[1:]):
        if setting != settings[0]:
            raise ValueError(f"{other}: its {CONFIG_NAME} differs from {first}'s; a soup averages runs of one recipe")
        if {w.name for w in other.glob("*.safetensors")} != {w.name for w in first.glob("*.safetensors")}:
            raise ValueError(f"{other}: it holds other weight files than {first}")
        for part in (p for p in first.iterdir() if p.is_dir() and p.name != "eval"):
            frozen, mine, theirs = part.name not in trained, part, other / part.name
            weights = {f for f in _files(mine) | _files(theirs) if f.suffix == ".safetensors"}  # a tokenizer may differ
            if not all((mine / f).is_file() and (theirs / f).is_file() and (not frozen or _same(mine / f, theirs / f))
                       for f in weights):
                why = (f"differs from {first}'s; a soup averages runs over the same frozen parts" if frozen
                       else f"holds other weight files than {first}'s")
                raise ValueError(f"{other}: its {part.name} {why}")


def _ingredient(bundle: Path) -> dict:
    """What a soup records of one bundle it averaged: where it was, and the run, checkpoint and seed it came from."""
    provenance = json.loads((bundle / "provenance.json").read_text()) if (bundle / "provenance.json").is_file() else {}
    config, run = bundle / "train_config.yaml", provenance.get("run")
    if not config.is_file() and bundle.name == "final" and (bundle.parent / "config.yaml").is_file():
        config, run = bundle.parent / "config.yaml", run or str(bundle.parent)  # a GRPO run's final/, in the run
    seed = None
    if config.is_file():
        import yaml

        seed = (yaml.safe_load(config.read_text()).get("train") or {}).get("seed")
    return {"bundle": str(bundle), "run": run, "checkpoint": provenance.get("checkpoint"), "seed": seed}


def soup(bundles: list[str | Path], out: str | Path, made_by: str = "", trained: tuple[str, ...] = ()) -> Path:
    """A uniform weight average ("model soup", Wortsman et al. 2022) of bundles fine-tuned from one start whose
    frozen parts are the same: every ``*.safetensors`` at the bundle's top (what the runs trained, e.g. the
    selection head) is averaged tensor by tensor; the rest is the first bundle's. Averaging runs of several seeds
    keeps what they agree on, which tends to carry better to inputs none of them saw than any one run does.
    ``trained`` names parts the runs trained (an agent's ``vlm``): their ``*.safetensors`` are averaged too.
    ``made_by`` is added to the provenance's account of how the bundle was made; ``soup_of`` lists each
    ingredient's run, checkpoint and seed."""
    from safetensors.torch import load_file, save_file

    bundles, out = [Path(b) for b in bundles], Path(out)
    _check_soup(bundles, out, trained)
    ingredients = [_ingredient(b) for b in bundles]
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(bundles[0], out, ignore=shutil.ignore_patterns("eval"))
    averaged = [w.relative_to(bundles[0]) for w in bundles[0].glob("*.safetensors")]
    averaged += [w.relative_to(bundles[0]) for part in trained for w in (bundles[0] / part).rglob("*.safetensors")]
    for weights in sorted(averaged):
        states = [load_file(str(b / weights)) for b in bundles]
        save_file(weighted_mean(states, [1 / len(states)] * len(states), f"{weights} of the bundles"), str(out / weights),
                  metadata={"format": "pt"})
    record = out / "provenance.json"
    provenance = json.loads(record.read_text()) if record.is_file() else {}
    provenance["soup_of"] = ingredients
    if made_by:
        provenance["made_by"] = f"{provenance['made_by']}, then {made_by}" if provenance.get("made_by") else made_by
    record.write_text(json.dumps(provenance, indent=2) + "\n")
    return out


TRAINING_RECORDS = ("pretrain.json", "provenance.json", "interpolation.json")  # what one model's own training says


def interpolate(a: str | Path, b: str | Path, out: str | Path, weight_b: float) -> Path:
    """``out``: a copy of model folder ``b`` whose weights are ``(1 - weight_b) * a + weight_b * b``, tensor by
    tensor, for two models of one architecture fine-tuned from one start (two SAMs that share their image encoder:
    one whose masks spill onto neighbours and one that draws exactly the shape under a point). ``b``'s training
    records are left out (they describe ``b``, not the mix); ``out/interpolation.json`` says of what and how much.
    Everything is mixed and checked before ``out`` is touched, so a refusal leaves no half-made model behind."""
    from safetensors.torch import load_file, save_file

    a, b, out = Path(a), Path(b), Path(out)
    if not 0.0 <= weight_b <= 1.0:
        raise ValueError(f"weight_b must lie in [0, 1], not {weight_b}")
    here = out.resolve()
    if any(here.is_relative_to(p.resolve()) or p.resolve().is_relative_to(here) for p in (a, b)):
        raise ValueError(f"{out} is one of the models it mixes, inside one or around one; write the mix elsewhere")
    names = sorted(w.relative_to(b) for w in b.rglob("*.safetensors"))
    if names != sorted(w.relative_to(a) for w in a.rglob("*.safetensors")) or not names:
        raise ValueError(f"{a} and {b} hold different weight files; interpolate two models of one architecture")
    mixed = {name: weighted_mean([load_file(str(a / name)), load_file(str(b / name))], [1 - weight_b, weight_b],
                                 f"{name} of {a} and {b}") for name in names}
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(b, out, ignore=shutil.ignore_patterns(*TRAINING_RECORDS))
    for name, tensors in mixed.items():
        save_file(tensors, str(out / name), metadata={"format": "pt"})
    record = {"of": [str(a), str(b)], "weights": [1 - weight_b, weight_b]}
    (out / "interpolation.json").write_text(json.dumps(record, indent=2) + "\n")
    return out


def weighted_mean(states: list[dict], weights: list[float], what: str) -> dict:
    """``sum(w * state)`` tensor by tensor, in float64, cast back to each tensor's dtype. The states must hold the
    same tensors (names, shapes, dtypes); one that is not a float (a count, an index) is not averaged: it must be
    the same in every state."""
    import torch

    first = states[0]
    if any(s.keys() != first.keys() or any(s[k].shape != first[k].shape or s[k].dtype != first[k].dtype for k in s)
           for s in states):
        raise ValueError(f"{what}: different tensors; average models of one architecture")
    mixed = {}
    for k, v in first.items():
        if v.is_floating_point():
            mixed[k] = sum(w * s[k].double() for w, s in zip(weights, states)).to(v.dtype)
        elif all(torch.equal(s[k], v) for s in states):
            mixed[k] = v
        else:
            raise ValueError(f"{what}: {k} is not a float tensor and differs")
    return mixed


if __name__ == "__main__":  # make's install step: `python -m tools.bundles beats EVAL_PREFIX BUNDLE`
    import sys

    if sys.argv[1:2] != ["beats"] or len(sys.argv) != 4:
        sys.exit("usage: python -m tools.bundles beats EVAL_PREFIX BUNDLE  (exit 0: install, 3: keep the installed one)")
    sys.exit(0 if beats_installed(sys.argv[2], sys.argv[3]) else 3)  # any other status is an error, and make stops
