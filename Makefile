# `make test` and `make demo` set everything up from scratch; nothing else needs to be run first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The venv sees system packages so that a user's own (CUDA) torch is reused, never replaced.
# Where no torch is importable at all, the CPU build torch==2.13.0 is installed first: a bare
# `torch` requirement would otherwise pull several GB of CUDA wheels.
TORCH_PIN := torch==2.13.0

.PHONY: setup lint test test-fast demo bench bench-gpu clean tiny-model browser box-prompt-model llmseg-model

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

# The browser test drives Debian's Chromium (playwright's own browser download cannot work offline);
# it is installed here when missing and apt-get is usable, and the test says why it is skipped otherwise.
browser:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
		echo "chromium not installed: the browser test will be skipped"; }

# The import layers (pyproject.toml [tool.importlinter]): a new arrow that points up fails here.
lint: $(STAMP)
	$(VENV)/bin/lint-imports

# Two workers, one test file each, one torch thread each (tests/conftest.py): the suite is CPU-bound on 2 cores
# (601 s with two workers on the last full run; 908 s in one process when last measured).
PYTEST_PAR := -n 2 --dist loadfile
test: $(STAMP) browser
	$(PY) -m pytest -q $(PYTEST_PAR)

# Everything but the real-size Meta ViT-B parity test.
test-fast: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_PAR) -m "not slow"

# Segments the bundled example scene with each design's bundled default (no download).
demo: $(STAMP)
	$(PY) -m vlmsam segment examples/scene.jpg "Find the one shape that is below the orange hexagon." --out outputs/demo
	$(PY) -m vlmsam segment examples/scene.jpg "Find the one shape that is below the orange hexagon." --segmenter box_prompt \
		--out outputs/demo-box-prompt
	$(PY) -m vlmsam segment examples/scene.jpg "Find the one shape that is below the orange hexagon." --segmenter proposal_select \
		--out outputs/demo-proposal-select

# The bundles' workshop (tools/, outside the installed package): an evaluation's metrics.json goes into the
# bundle (its model card), its predictions.jsonl and summary.png into docs/bundled/<bundle>/ (the record).
WEIGHTS := src/vlmsam/weights
file_eval = $(PY) -c "from tools.bundles import file_evaluation; file_evaluation('build/eval/$(1)', '$(WEIGHTS)/$(1)')"
# A part byte for byte vlmsam-tiny's is named by a relative path instead of shipped twice.
share_parts = $(PY) -c "from tools.bundles import share_parts; share_parts('$(WEIGHTS)/$(1)', ('$(2)',))"

# Rebuilds the bundled vlmsam-tiny from scratch (about 115 minutes on 2 CPU cores): synthetic scenes,
# the untrained base, SAM's promptable pre-training, the VLM vision tower's dense pre-training, [SEG] training with configs/vlmsam_tiny.yaml,
# export into the package, and an evaluation on freshly generated test scenes (a seed not used in
# training). The bundles made from it get their own copies of its parts first (tools/bundles.py).
TINY_SAM_STEPS := 3000
TINY_VISION_STEPS := 5000
tiny-model: $(STAMP)
	rm -rf build/synth build/vlmsam-tiny-base build/runs/vlmsam-tiny build/synth-fresh build/eval/vlmsam-tiny
	$(PY) -m vlmsam data synth --out build/synth --n 25000 --seed 0
	$(PY) -c "from tools.default_model import build_base; build_base('build/vlmsam-tiny-base')"
	$(PY) -m tools.pretrain sam build/vlmsam-tiny-base/sam --data build/synth --out build/vlmsam-tiny-base/sam-pretrained \
		--steps $(TINY_SAM_STEPS)
	$(PY) -m tools.pretrain vision build/vlmsam-tiny-base/vlm --data build/synth --out build/vlmsam-tiny-base/vlm-pretrained \
		--steps $(TINY_VISION_STEPS) --kind-weight 3
	$(PY) -m vlmsam train configs/vlmsam_tiny.yaml
	# the run's last checkpoint (earlier recipes validated best mid-run on checkpoints that refused every "the <colour> <kind>")
	$(PY) -c "from tools.default_model import export; export('build/runs/vlmsam-tiny', which='last')"
	$(PY) -m vlmsam data synth --out build/synth-fresh --n 5000 --seed 7
	$(PY) -m vlmsam evaluate --dataset reason_seg:test --dataset-dir build/synth-fresh --out build/eval/vlmsam-tiny \
		--model $(WEIGHTS)/vlmsam-tiny
	$(call file_eval,vlmsam-tiny)

# The box_prompt design's offline default (about 90 minutes on 2 cores): vlmsam-tiny's VLM, merged, with one
# token per whole number 10..256, taught to answer in Qwen2.5-VL's grounding JSON with the grounding head
# looking at each coordinate's edge of the object (configs/box_prompt_tiny.yaml, stopped at step 1,500), then
# with the coordinates taught as ordinal values (configs/box_prompt_tiny_stage2.yaml); exported to
# build/vlmsam-tiny-grounding and evaluated on the fresh test scenes; its SAM is vlmsam-tiny's, shared.
# docs/vlmsam-tiny.md has every run.
box-prompt-model: $(STAMP)
	test -d build/synth || $(PY) -m vlmsam data synth --out build/synth --n 25000 --seed 0
	rm -rf build/vlmsam-tiny-merged build/box-prompt-stage1 build/eval/vlmsam-tiny-grounding
	$(PY) -c "from vlmsam.seg_token import SegTokenModel; SegTokenModel.from_pretrained('$(WEIGHTS)/vlmsam-tiny').save_merged('build/vlmsam-tiny-merged')"
	$(PY) -c "from tools.default_model import add_number_tokens; add_number_tokens('build/vlmsam-tiny-merged', 256)"
	$(PY) -m vlmsam train configs/box_prompt_tiny.yaml train.stop_at_step=1500 --overwrite
	$(PY) -c "from tools.default_model import export_box_prompt; export_box_prompt('build/runs/box-prompt-tiny', 'build/box-prompt-stage1', which='step_001500')"
	$(PY) -m vlmsam train configs/box_prompt_tiny_stage2.yaml --overwrite
	$(PY) -c "from tools.default_model import export_box_prompt; export_box_prompt('build/runs/box-prompt-tiny-stage2', 'build/vlmsam-tiny-grounding')"
	test -d build/synth-fresh || $(PY) -m vlmsam data synth --out build/synth-fresh --n 5000 --seed 7
	$(PY) -m vlmsam evaluate --model build/vlmsam-tiny-grounding --dataset reason_seg:test --dataset-dir build/synth-fresh \
		--out build/eval/vlmsam-tiny-grounding
	rm -rf $(WEIGHTS)/vlmsam-tiny-grounding && cp -r build/vlmsam-tiny-grounding $(WEIGHTS)/
	$(call file_eval,vlmsam-tiny-grounding)
	$(call share_parts,vlmsam-tiny-grounding,sam)

# The proposal_select design's offline default, selector llmseg (about 30 minutes on 2 cores): vlmsam-tiny's SAM
# with its multimask outputs and IoU head trained (what automatic mask generation ranks by), a tiny DINOv2
# pre-trained densely here, automatic proposals over 2,000 training scenes (two processes under torchrun), the
# selection head trained over them on vlmsam-tiny's frozen VLM (configs/llmseg_tiny.yaml), exported to
# build/vlmsam-tiny-llmseg and evaluated on the fresh test scenes; its VLM is vlmsam-tiny's, shared.
# docs/vlmsam-tiny.md has the runs.
LLMSEG_ENV := OMP_NUM_THREADS=1
llmseg-model: $(STAMP)
	rm -rf build/llmseg build/runs/llmseg-tiny build/eval/vlmsam-tiny-llmseg
	$(PY) -m vlmsam data synth --out build/llmseg/synth --n 2500 --seed 11
	$(PY) -c "from vlmsam.seg_token import SegTokenModel; SegTokenModel.from_pretrained('$(WEIGHTS)/vlmsam-tiny').save_merged('build/llmseg/vlm')"
	$(PY) -m tools.pretrain sam $(WEIGHTS)/vlmsam-tiny/sam --data build/synth --out build/llmseg/sam-multimask \
		--steps 800 --lr 1e-3 --multimask --background-share 0.5 --point-share 0.7 --freeze-image-encoder
	$(PY) -c "from tools.pretrain_dinov2 import *; pretrain_dinov2('build/synth', 'build/llmseg/dinov2-tiny', DinoPretrainConfig(steps=1200, batch_size=24))"
	$(LLMSEG_ENV) $(VENV)/bin/torchrun --nproc_per_node=2 -m vlmsam proposals --dataset-dir build/llmseg/synth \
		--datasets reason_seg:train --out build/llmseg/proposals --sam build/llmseg/sam-multimask --points-per-side 16 \
		--pred-iou-thresh 0.7 --stability-score-thresh 0.85
	$(PY) -m vlmsam train configs/llmseg_tiny.yaml --overwrite
	# the single best proposal per [SEG]: chosen on the 250 validation scenes of build/llmseg/synth (gIoU 0.808 against
	# 0.793 for LLM-Seg's union of proposals above 0.5), never on the test scenes
	$(PY) -c "from tools.default_model import export_llmseg; export_llmseg('build/runs/llmseg-tiny', 'build/vlmsam-tiny-llmseg', select_single=True)"
	test -d build/synth-fresh || $(PY) -m vlmsam data synth --out build/synth-fresh --n 5000 --seed 7
	$(PY) -m vlmsam evaluate --model build/vlmsam-tiny-llmseg --dataset reason_seg:test --dataset-dir build/synth-fresh \
		--out build/eval/vlmsam-tiny-llmseg
	rm -rf $(WEIGHTS)/vlmsam-tiny-llmseg && cp -r build/vlmsam-tiny-llmseg $(WEIGHTS)/
	$(call file_eval,vlmsam-tiny-llmseg)
	$(call share_parts,vlmsam-tiny-llmseg,vlm)

# Every CPU benchmark (bench_gpu.py has its own target: it needs CUDA).
bench: $(STAMP)
	@for b in benchmarks/bench_*.py; do [ "$$b" = benchmarks/bench_gpu.py ] && continue; echo "== $$b"; $(PY) $$b || exit 1; done

# Qwen2.5-VL-7B + SAM ViT-H shapes in bf16 on one GPU (about 5 minutes); says so and exits 0 without CUDA.
bench-gpu: $(STAMP)
	$(PY) benchmarks/bench_gpu.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
