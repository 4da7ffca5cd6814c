"""SAM 3 phrase training through `vlmsam train` (model.model_type: grounded), its phrase samples and losses,
the per-instance phrase evaluation, and `vlmsam sam --phrase`, on tiny real Sam3Models and real files."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import run_cli
from vlmsam.data.phrases import concepts, phrases_for
from vlmsam.data.synth import COLORS, SHAPES, write_synth
from vlmsam.evaluation.phrases import match_instances, mask_ious
from vlmsam.sam.sam3_losses import Sam3LossWeights, generalized_iou, masks_to_boxes, sam3_losses

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = {"model.tiny_image_size": 56, "model.tiny_hidden": 32, "model.tiny_vit_layers": 1, "model.tiny_decoder_layers": 1,
        "model.phrases_per_image": 3}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    write_synth(root, 40, seed=3, progress=False)
    return root


def _scene_jsons(root, split="train"):
    return sorted(root.rglob(f"ReasonSeg/{split}/*.json"))


def test_phrases_name_exactly_their_instances(scenes):
    for path in _scene_jsons(scenes)[:20]:
        scene = json.loads(path.read_text())["scene"]
        phrases = phrases_for(path.stem, scene, n=8)
        assert phrases == phrases_for(path.stem, scene, n=8)  # the same every read: exact resume
        assert len({p.text for p in phrases}) == len(phrases)
        for p in phrases:
            words = p.text.split()
            color = next((w for w in words if w in COLORS), None)
            shape = next((s for s in SHAPES if any(w in (s, s + "s", s + "es") for w in words)), None)
            want = tuple(k for k, s in enumerate(scene) if (color is None or s["color"] == color) and (shape is None or s["shape"] == shape))
            assert p.instances == want, p.text
    everything = concepts([{"color": "red", "shape": "star"}, {"color": "red", "shape": "circle"}])
    assert everything[("red", None)] == (0, 1) and everything[(None, "star")] == (0,)


def test_losses_prefer_the_truth_and_negatives_train_presence_only():
    torch.manual_seed(0)
    masks = torch.zeros(2, 16, 16, dtype=torch.bool)
    masks[0, 2:6, 2:8], masks[1, 9:15, 10:14] = True, True
    boxes = masks_to_boxes(masks)
    np.testing.assert_allclose(boxes[0].numpy(), [2 / 16, 2 / 16, 8 / 16, 6 / 16])
    assert torch.allclose(torch.diag(generalized_iou(boxes, boxes)), torch.ones(2))
    targets = [{"boxes": boxes, "masks": masks.float()}, {"boxes": torch.zeros(0, 4), "masks": torch.zeros(0, 16, 16)}]

    class Out:
        def __init__(self, good: bool):
            q = 5
            self.pred_logits = torch.full((2, q), -6.0)
            self.pred_boxes = torch.rand(2, q, 4).sort(-1).values[..., [0, 1, 2, 3]]
            self.pred_masks = torch.randn(2, q, 16, 16)
            self.presence_logits = torch.tensor([[4.0], [-4.0]]) if good else torch.tensor([[-4.0], [4.0]])
            if good:
                self.pred_logits[0, [1, 3]] = 6.0
                self.pred_boxes[0, [1, 3]] = boxes
                self.pred_masks[0, [1, 3]] = masks.float() * 20 - 10

    good, bad = sam3_losses(Out(True), targets), sam3_losses(Out(False), targets)
    # earlier decoder layers (aux): a wrong layer adds to the box and class losses, a right one adds little
    wrong, right = Out(False), Out(True)
    aux_bad = sam3_losses(Out(True), targets, layers=(wrong.pred_logits[None], wrong.pred_boxes[None], wrong.presence_logits[None]))
    aux_good = sam3_losses(Out(True), targets, layers=(right.pred_logits[None], right.pred_boxes[None], right.presence_logits[None]))
    assert aux_bad["giou_loss"] > good["giou_loss"] + 0.5 and aux_bad["presence_loss"] > good["presence_loss"]
    assert aux_good["giou_loss"] < 1e-4 and aux_good["loss"] < aux_bad["loss"]
    assert good["loss"] < bad["loss"] and good["giou_loss"] < 1e-4 and good["bbox_loss"] < 1e-6
    only_negative = sam3_losses(Out(True), targets[1:] * 2)
    assert only_negative["class_loss"] == 0 and only_negative["mask_loss"] == 0 and only_negative["presence_loss"] > 0


def test_training_a_sam3_with_a_tracker_trains_the_shared_vit_and_freezes_the_tracker():
    from vlmsam.gsam.training import Sam3TrainingModel
    from vlmsam.gsam.training_config import Sam3TrainConfig
    from vlmsam.sam.sam3_tiny import build_tiny_sam3

    model = Sam3TrainingModel(build_tiny_sam3(seed=0, tracker=True), Sam3TrainConfig(sam="tiny"))
    assert all(p.requires_grad for p in model.sam3.vision_encoder.backbone.parameters())
    assert not any(p.requires_grad for p in model.tracker.vision_encoder.neck.parameters())
    assert not any(p.requires_grad for p in model.tracker.mask_decoder.parameters())
    frozen = Sam3TrainingModel(build_tiny_sam3(seed=0, tracker=True), Sam3TrainConfig(sam="tiny", train_vision=False))
    assert not any(p.requires_grad for p in frozen.sam3.vision_encoder.parameters())


def test_parts_train_at_rates_of_their_own_as_metas_fine_tuning():
    """ViT at vision_lr_scale × lr with layer-wise decay (patch embedding lowest, last block highest, the position
    embedding and the neck undecayed), text encoder
    at text_lr_scale, detector at lr; every trained weight in exactly one group."""
    from types import SimpleNamespace

    from vlmsam.gsam.training import Sam3TrainingModel
    from vlmsam.gsam.training_config import Sam3TrainConfig
    from vlmsam.train.steps import build_optimization

    sizes = {k.removeprefix("model."): v for k, v in TINY.items()} | {"tiny_vit_layers": 3}
    model = Sam3TrainingModel.build(Sam3TrainConfig(sam="tiny", vision_lr_scale=0.3125, vision_layer_decay=0.9,
                                                    text_lr_scale=0.0625, **sizes))
    t = SimpleNamespace(lr=8e-4, betas=(0.9, 0.999), weight_decay=0.1, warmup_steps=0, epochs=1, steps_per_epoch=10,
                        precision="fp32", deepspeed=None)
    opt = build_optimization(model, SimpleNamespace(train=t), torch.device("cpu"), 1).optimizer
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert sum(len(g["params"]) for g in opt.param_groups) == len(lr_of)
    assert set(lr_of) == {id(p) for p in model.parameters() if p.requires_grad}
    vit = model.sam3.vision_encoder.backbone
    expect = [(vit.embeddings.patch_embeddings.parameters(), 8e-4 * 0.3125 * 0.9 ** 4), (vit.layer_norm.parameters(), 8e-4 * 0.3125 * 0.9 ** 4),
              ([vit.embeddings.position_embeddings], 8e-4 * 0.3125),
              (vit.layers[0].parameters(), 8e-4 * 0.3125 * 0.9 ** 3), (vit.layers[2].parameters(), 8e-4 * 0.3125 * 0.9),
              (model.sam3.vision_encoder.neck.parameters(), 8e-4 * 0.3125), (model.sam3.text_encoder.parameters(), 8e-4 * 0.0625),
              (model.sam3.detr_decoder.parameters(), 8e-4), (model.sam3.mask_decoder.parameters(), 8e-4)]
    for params, lr in expect:
        got = [lr_of[id(p)] for p in params]
        assert got and got == pytest.approx([lr] * len(got))
    # Meta's weight decay: none on '*bias*' nor on LayerNorm weights, train.weight_decay on the rest
    wd_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    norms = {id(p) for m in model.sam3.modules() if isinstance(m, torch.nn.LayerNorm) for p in m.parameters(recurse=False)}
    named = dict(model.sam3.named_parameters())
    assert norms and {wd_of[id(p)] for n, p in named.items() if p.requires_grad and ("bias" in n or id(p) in norms)} == {0.0}
    assert {wd_of[id(p)] for n, p in named.items() if p.requires_grad and not ("bias" in n or id(p) in norms)} == {0.1}
    assert wd_of[id(model.sam3.vision_encoder.backbone.layers[0].mlp.fc1.weight)] == 0.1
    decayed = Sam3TrainingModel.build(Sam3TrainConfig(sam="tiny", decay_bias_and_norm=True, **sizes))
    opt = build_optimization(decayed, SimpleNamespace(train=t), torch.device("cpu"), 1).optimizer
    assert {g["weight_decay"] for g in opt.param_groups} == {0.1}


def test_lora_adapters_of_another_rank_are_one_clear_error(tmp_path):
    from vlmsam.errors import CheckpointError
    from vlmsam.gsam.training import Sam3TrainingModel
    from vlmsam.gsam.training_config import Sam3TrainConfig

    sizes = {k.removeprefix("model."): v for k, v in TINY.items()}
    Sam3TrainingModel.build(Sam3TrainConfig(sam="tiny", use_lora=True, lora_r=4, **sizes)).save_pretrained(tmp_path / "r4")
    other = Sam3TrainingModel.build(Sam3TrainConfig(sam="tiny", use_lora=True, lora_r=8, **sizes))
    with pytest.raises(CheckpointError, match=r"0 missing, 0 unexpected, \d+ of another size"):
        other.load_trainable(tmp_path / "r4")
    with pytest.raises(CheckpointError, match="not a LoRA checkpoint"):
        other.load_trainable(tmp_path / "r4" / "sam")


def test_instance_matching_is_one_to_one():
    a = np.zeros((3, 8, 8), bool)
    a[0, :4], a[1, 4:], a[2, :, :2] = True, True, True
    assert mask_ious(a, a[:2]).shape == (3, 2)
    assert match_instances(a, a[:2]) == [1.0, 1.0]
    assert match_instances(a[:1], a[:2]) == [1.0]  # one prediction matches one truth only
    assert match_instances(np.zeros((0, 8, 8), bool), a) == []


def _train(scenes, run, *extra):
    settings = {"model.model_type": "grounded", "model.sam": "tiny", **TINY, "data.dataset_dir": scenes, "data.datasets": "synth",
                "data.sample_rates": "1", "data.num_workers": 0, "train.run_dir": run, "train.epochs": 1,
                "train.steps_per_epoch": 4, "train.batch_size": 2, "train.save_every": 2, "train.log_every": 1,
                "train.lr": 1e-3, "train.warmup_steps": 0, "train.progress": "false", "eval.val_dataset": ""}
    return run_cli("train", *[f"{k}={v}" for k, v in settings.items()], *extra, timeout=600)


def test_phrase_training_resumes_exactly_and_writes_a_grounded_checkpoint(scenes, tmp_path):
    dac = "model.dac=true"  # with Meta's one-to-many branch (tests/test_sam3_dac.py), which must resume exactly too
    whole = _train(scenes, tmp_path / "whole", dac)
    assert whole.returncode == 0, whole.stderr[-2000:]
    cut = _train(scenes, tmp_path / "cut", dac, "train.stop_at_step=2")
    assert cut.returncode == 0, cut.stderr[-2000:]
    resumed = _train(scenes, tmp_path / "cut", dac, "train.resume=auto")
    assert resumed.returncode == 0 and "resumed from" in resumed.stdout + resumed.stderr
    a = load_file(str(tmp_path / "whole/checkpoints/step_000004/sam/model.safetensors"))
    b = load_file(str(tmp_path / "cut/checkpoints/step_000004/sam/model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line) for line in (tmp_path / "whole/log.jsonl").read_text().splitlines()]
    assert {"class_loss", "presence_loss", "mask_loss", "dice_loss", "class_loss_o2m", "giou_loss_o2m"} <= set(log[-1])
    config = json.loads((tmp_path / "whole/checkpoints/step_000004/vlmsam_config.json").read_text())
    assert config["model_type"] == "vlmsam_grounded" and config["detector"] is None

    out = tmp_path / "eval"
    done = run_cli("evaluate", "--model", tmp_path / "whole/checkpoints/step_000004", "--dataset", "phrases:test",
                   "--dataset-dir", scenes, "--out", out)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["phrases"] > metrics["images"] > 0 and 0 <= metrics["instance_recall"] <= 1
    assert (out / "summary.png").stat().st_size > 1000


def test_lora_trains_adapters_only_writes_a_merged_sam3_and_resumes_exactly(scenes, tmp_path):
    from vlmsam.gsam.training import Sam3TrainingModel
    from vlmsam.gsam.training_config import Sam3TrainConfig

    lora = ("model.use_lora=true", "model.train_vision=false", "model.train_text=false", "model.lora_r=4")
    whole = _train(scenes, tmp_path / "whole", *lora)
    assert whole.returncode == 0, whole.stderr[-2000:]
    assert "LoRA r=4 on detector, mask_decoder" in whole.stdout + whole.stderr
    assert _train(scenes, tmp_path / "cut", *lora, "train.stop_at_step=2").returncode == 0
    resumed = _train(scenes, tmp_path / "cut", *lora, "train.resume=auto")
    assert resumed.returncode == 0 and "resumed from" in resumed.stdout + resumed.stderr, resumed.stderr[-2000:]
    for name in ("sam/model.safetensors", "sam_lora.safetensors"):
        a, b = (load_file(str(tmp_path / run / "checkpoints/step_000004" / name)) for run in ("whole", "cut"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    # the checkpoint's SAM 3 is a plain Sam3Model: the base's keys, frozen parts untouched, adapted layers changed
    sizes = {k.removeprefix("model."): v for k, v in TINY.items()}
    base = Sam3TrainingModel.build(Sam3TrainConfig(sam="tiny", **sizes)).sam3.state_dict()
    merged = load_file(str(tmp_path / "whole/checkpoints/step_000004/sam/model.safetensors"))
    assert merged.keys() == base.keys()
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    assert changed and all(k.startswith(("detr_", "geometry_", "dot_product", "mask_decoder")) for k in changed)
    assert all(k.endswith(".weight") and k.rsplit(".", 2)[-2] in Sam3TrainConfig().lora_targets for k in changed)
    done = run_cli("evaluate", "--model", tmp_path / "whole/checkpoints/step_000004", "--dataset", "phrases:test",
                   "--dataset-dir", scenes, "--out", tmp_path / "eval")
    assert done.returncode == 0, done.stderr[-2000:]
    bad = _train(scenes, tmp_path / "bad", "model.use_lora=true", "model.lora_targets=[nope]")
    assert bad.returncode == 2 and "model.lora_targets" in bad.stderr and "Traceback" not in bad.stderr


def test_sam_phrase_cli_writes_instances_and_refuses_a_sam_without_phrases(tmp_path):
    from tests.helpers.tiny_segmenters import save_tiny_sam2
    from vlmsam.sam.sam3_tiny import build_tiny_sam3

    sam3 = build_tiny_sam3(seed=0)
    sam3.save_pretrained(tmp_path / "sam3")
    rng = np.random.default_rng(0)
    from PIL import Image

    Image.fromarray((rng.random((50, 70, 3)) * 255).astype(np.uint8)).save(tmp_path / "pic.png")
    done = run_cli("sam", tmp_path / "pic.png", "--sam", tmp_path / "sam3", "--phrase", "red circle", "--phrase", "star",
                   "--score-threshold", "0.0", "--out", tmp_path / "out", "--device", "cpu")
    assert done.returncode == 0, done.stderr[-2000:]
    records = json.loads((tmp_path / "out/pic_instances.json").read_text())
    assert {r["phrase"] for r in records} == {"red circle", "star"} and all(r["segmentation"]["size"] == [50, 70] for r in records)
    refused = run_cli("sam", tmp_path / "pic.png", "--sam", save_tiny_sam2(tmp_path / "sam2"), "--phrase", "star",
                      "--out", tmp_path / "out2", "--device", "cpu")
    assert refused.returncode == 2 and "needs a SAM 3" in refused.stderr and "Traceback" not in refused.stderr
    random.seed(0)


def _coco_folder(root):
    """Two images in COCO's layout: polygons of two categories, a crowd region, and a category never present."""
    from PIL import Image

    (root / "annotations").mkdir(parents=True)
    (root / "images").mkdir()
    rng = np.random.default_rng(1)
    images, anns = [], []
    for i in range(2):
        Image.fromarray((rng.random((60, 80, 3)) * 255).astype(np.uint8)).save(root / "images" / f"{i}.jpg")
        images.append({"id": i + 1, "file_name": f"{i}.jpg", "height": 60, "width": 80})
        for k, (cat, x) in enumerate([(1, 5), (1, 40), (2, 20)]):
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cat, "iscrowd": 0, "area": 200.0,
                         "bbox": [x, 10, 15, 20], "segmentation": [[x, 10, x + 15, 10, x + 15, 30, x, 30]]})
        anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 2, "iscrowd": 1, "area": 10.0, "bbox": [0, 0, 5, 5],
                     "segmentation": {"size": [60, 80], "counts": [0, 25, 4775]}})
        anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 4, "iscrowd": 1, "area": 10.0, "bbox": [0, 0, 5, 5],
                     "segmentation": {"size": [60, 80], "counts": [0, 25, 4775]}})  # books only as a crowd region
    cats = [{"id": 1, "name": "cup"}, {"id": 2, "name": "knife"}, {"id": 3, "name": "zebra"}, {"id": 4, "name": "book"}]
    (root / "annotations" / "instances.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return root


def test_coco_instances_become_phrases_with_all_their_instances_and_train(tmp_path):
    from vlmsam.data.coco_instances import CocoInstancesDataset

    root = _coco_folder(tmp_path / "coco")
    ds = CocoInstancesDataset(root, "annotations/instances.json|images", negatives=3)
    sample = ds.load(0, random.Random(0))
    targets = dict(sample.meta["phrase_targets"])
    assert [len(targets[n]) for n in ("cup", "knife", "zebra")] == [2, 1, 0]  # the crowd region is left out
    assert "book" not in targets  # present only as a crowd region: neither an instance nor a phrase naming nothing
    assert targets["cup"][0, 20, 10] and not targets["cup"][0, 5, 10]
    run = _train(root, tmp_path / "run", "data.datasets=coco_instances",
                 "data.coco_instances_data=annotations/instances.json|images", "train.steps_per_epoch=2")
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "run/checkpoints/step_000002/sam/model.safetensors").is_file()
    done = run_cli("evaluate", "--model", tmp_path / "run/checkpoints/step_000002", "--dataset",
                   "coco_instances:annotations/instances.json|images", "--dataset-dir", root, "--out", tmp_path / "eval")
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((tmp_path / "eval/metrics.json").read_text())
    assert metrics["images"] == 2 and metrics["instances"] == 6 and metrics["no_target_phrases"] == 2
    bad = root / "annotations" / "broken.json"
    bad.write_text('{"images": [')
    from vlmsam.errors import DatasetError

    with pytest.raises(DatasetError, match="not a COCO instances file"):
        CocoInstancesDataset(root, "annotations/broken.json|images")
