# `make test` and `make demo` set everything up from scratch; nothing else needs to be run first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The venv sees system packages so that a user's own (CUDA) torch is reused, never replaced.
# Where no torch is importable at all, the CPU build torch==2.13.0 is installed first: a bare
# `torch` requirement would otherwise pull several GB of CUDA wheels.
TORCH_PIN := torch==2.13.0

.PHONY: setup lint test test-fast demo bench bench-gpu clean tiny-model browser box-prompt-model llmseg-model agent-model \
	tiny-model-phrasing box-prompt-model-phrasing llmseg-model-phrasing llmseg-model-soup box-prompt-model-grpo box-prompt-model-soup \
	box-prompt-model-sam-mid fresh sam3-model

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
# (633 s with two workers on the last full run, 10.6 minutes with `make lint` and the install).
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
	$(PY) -m vlmsam segment examples/scene.jpg "all the triangles" --segmenter grounded --out outputs/demo-sam3
	$(PY) -m vlmsam segment examples/scene.jpg "Find the one shape that is below the orange hexagon." --segmenter agent \
		--out outputs/demo-agent

# The bundles' workshop (tools/, outside the installed package): an evaluation's metrics.json goes into the
# bundle (its model card), its predictions.jsonl and summary.png into docs/bundled/<bundle>/ (the record).
WEIGHTS := src/vlmsam/weights
# The 500 test scenes of each wording split (seed 7, never trained on): the generator's own words (original), the
# request grammar's training families (rich) and its held-out families (heldout); `vlmsam data synth --phrasing`.
PHRASINGS := original rich heldout
build/fresh-%: | $(STAMP)
	$(PY) -m vlmsam data synth --out $@ --n 5000 --seed 7 $(if $(filter original,$*),,--phrasing $*)
fresh: build/fresh-original build/fresh-rich build/fresh-heldout
# $(1) a bundle's name, $(2) its model directory: evaluated on every split, then each evaluation filed in the
# installed bundle (eval/metrics.json for original, eval/metrics-<split>.json for the others).
eval_splits = for p in $(PHRASINGS); do $(PY) -m vlmsam evaluate --model $(2) --dataset reason_seg:test \
	--dataset-dir build/fresh-$$p --out build/eval/$(1)-$$p || exit 1; done
file_evals = for p in $(PHRASINGS); do $(PY) -c "from tools.bundles import file_evaluation; \
	file_evaluation('build/eval/$(1)-$$p', '$(WEIGHTS)/$(1)', split='' if '$$p' == 'original' else '$$p')" || exit 1; done
# The rich-worded training scenes the wording and GRPO stages learn from (made once, kept).
synth_rich = test -d build/synth-rich || $(PY) -m vlmsam data synth --out build/synth-rich --n 25000 --seed 0 --phrasing rich
# $(1): a standalone copy of the installed vlmsam-tiny-grounding (its shared SAM copied in), where a stage starts.
grounding_copy = $(PY) -c "from tools.bundles import standalone_copy; standalone_copy('$(WEIGHTS)/vlmsam-tiny-grounding', '$(1)')"
# A part byte for byte vlmsam-tiny's is named by a relative path instead of shipped twice; before a bundle is replaced,
# the bundles that name a part of it get their own copies (vlmsam-tiny-grounding may name vlmsam-tiny-llmseg's SAM).
unshare_dependents = $(PY) -c "from tools.bundles import unshare_dependents; unshare_dependents('$(WEIGHTS)/$(1)')"
share_parts = $(PY) -c "from tools.bundles import share_parts; share_parts('$(WEIGHTS)/$(1)', ('$(2)',))"
# $(1) a bundle's name, $(2) its new build, $(3) the part it shares with vlmsam-tiny: installed, its evaluations
# (build/eval/$(1)-<split>) filed; install_if_better only when their gIoU summed over the splits beats the installed
# one's (an error stops make).
install = $(call unshare_dependents,$(1)) && rm -rf $(WEIGHTS)/$(1) && cp -r $(2) $(WEIGHTS)/$(1) && \
	$(call file_evals,$(1)) && $(call share_parts,$(1),$(3))
install_if_better = $(PY) -m tools.bundles beats build/eval/$(1) $(WEIGHTS)/$(1); rc=$$?; [ $$rc = 3 ] || \
	{ [ $$rc = 0 ] && $(call install,$(1),$(2),$(3)); }

# Rebuilds the bundled vlmsam-tiny from scratch (about 150 minutes on 2 CPU cores, its wording stage included): synthetic scenes,
# the untrained base, SAM's promptable pre-training, the VLM vision tower's dense pre-training, [SEG] training with configs/vlmsam_tiny.yaml,
# export into the package, and an evaluation on freshly generated test scenes (a seed not used in
# training). The bundles made from it get their own copies of its parts first (tools/bundles.py).
TINY_SAM_STEPS := 3000
TINY_VISION_STEPS := 5000
tiny-model: $(STAMP)
	rm -rf build/synth build/vlmsam-tiny-base build/runs/vlmsam-tiny
	$(PY) -m vlmsam data synth --out build/synth --n 25000 --seed 0
	$(PY) -c "from tools.default_model import build_base; build_base('build/vlmsam-tiny-base')"
	$(PY) -m tools.pretrain sam build/vlmsam-tiny-base/sam --data build/synth --out build/vlmsam-tiny-base/sam-pretrained \
		--steps $(TINY_SAM_STEPS)
	$(PY) -m tools.pretrain vision build/vlmsam-tiny-base/vlm --data build/synth --out build/vlmsam-tiny-base/vlm-pretrained \
		--steps $(TINY_VISION_STEPS) --kind-weight 3
	$(PY) -m vlmsam train configs/vlmsam_tiny.yaml
	# the run's last checkpoint (earlier recipes validated best mid-run on checkpoints that refused every "the <colour> <kind>")
	$(PY) -c "from tools.default_model import export; export('build/runs/vlmsam-tiny', which='last')"
	$(MAKE) tiny-model-phrasing

# Stage 6 of vlmsam-tiny (about 35 minutes on 2 cores): the installed vlmsam-tiny fine-tuned on requests in the
# rich grammar's wordings (configs/vlmsam_tiny_phrasing.yaml), exported, evaluated on the three wording splits
# and installed. Its SAM is unchanged (a bundle that named it by path, as vlmsam-tiny-grounding did until its run S,
# shares it again); vlmsam-tiny-llmseg keeps a copy
# of the VLM its head was trained on until `make llmseg-model-phrasing` retrains the head on the new one.
tiny-model-phrasing: $(STAMP) fresh
	rm -rf build/synth-rich build/vlmsam-tiny-start build/runs/vlmsam-tiny-phrasing build/vlmsam-tiny
	$(PY) -m vlmsam data synth --out build/synth-rich --n 25000 --seed 0 --phrasing rich
	$(PY) -c "from tools.default_model import start_point; start_point('$(WEIGHTS)/vlmsam-tiny', 'build/vlmsam-tiny-start')"
	$(PY) -m vlmsam train configs/vlmsam_tiny_phrasing.yaml --overwrite
	$(PY) -c "from tools.default_model import export_phrasing; \
		export_phrasing('build/runs/vlmsam-tiny-phrasing', 'build/vlmsam-tiny-start', 'build/vlmsam-tiny')"
	$(call eval_splits,vlmsam-tiny,build/vlmsam-tiny)
	$(PY) -c "from tools.bundles import unshare_dependents; unshare_dependents('$(WEIGHTS)/vlmsam-tiny')"
	rm -rf $(WEIGHTS)/vlmsam-tiny && cp -r build/vlmsam-tiny $(WEIGHTS)/
	$(call file_evals,vlmsam-tiny)
	$(call share_parts,vlmsam-tiny-grounding,sam)

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
	$(MAKE) box-prompt-model-phrasing

# Stage 4 of vlmsam-tiny-grounding: GRPO of the installed bundle with SAM-R1's reward (configs/box_prompt_tiny_grpo.yaml,
# docs/rl.md), evaluated on the three splits; installed only if its gIoU summed over them beats the bundle's and its
# mask for the demo's request covers at least 75 % of the right shape; a run rewarded through another SAM
# (GRPO_ARGS="model.sam=...") is installed with it, or with the bundle's own SAM where GRPO_KEEP_SAM=1 (tools/rl_bundle.py).
GRPO_STEPS ?= 300  # run L, bundled until the soup, ran 1,200 from run K's bundle (docs/rl.md has its GRPO_ARGS and GRPO_KEEP_SAM)
GRPO_ARGS ?=  # more overrides of the config, e.g. "grpo.num_generations=16 grpo.temperature=1.0" (run E)
GRPO_KEEP_SAM ?= 0  # 1: a run rewarded through another SAM (model.sam=...) is judged and installed with the bundle's own (run L)
box-prompt-model-grpo: $(STAMP) fresh
	$(synth_rich)
	rm -rf build/grounding-rl-start build/eval/grounding-grpo-*
	$(call grounding_copy,build/grounding-rl-start)
	$(PY) -m vlmsam train configs/box_prompt_tiny_grpo.yaml train.steps_per_epoch=$(GRPO_STEPS) $(GRPO_ARGS) --overwrite
	$(if $(filter 1,$(GRPO_KEEP_SAM)),$(PY) -c "from tools.rl_bundle import pair_with_bundle_sam; \
		pair_with_bundle_sam('build/runs/box-prompt-tiny-grpo', '$(WEIGHTS)/vlmsam-tiny-grounding')")
	$(call eval_splits,grounding-grpo,build/runs/box-prompt-tiny-grpo/$(if $(filter 1,$(GRPO_KEEP_SAM)),paired,final))
	$(PY) -c "from tools.rl_bundle import install_if_better; install_if_better('build/runs/box-prompt-tiny-grpo', \
		'$(WEIGHTS)/vlmsam-tiny-grounding', 'build/eval/grounding-grpo-original', keep_sam=$(if $(filter 1,$(GRPO_KEEP_SAM)),True,False))" 

# Stage 5 of vlmsam-tiny-grounding (about 75 minutes on 2 cores): two GRPO runs from the installed bundle through its
# own SAM (runs N and O of docs/rl.md: seed 8; seed 9 with more no-target requests), their VLMs averaged weight by
# weight (tools.bundles.soup), evaluated on the three splits and installed if better. It starts from the installed
# bundle: to rebuild the soup, first put run L's back (`git restore --source=1256ea7 --worktree --staged --
# src/vlmsam/weights/vlmsam-tiny-grounding docs/bundled/vlmsam-tiny-grounding`, which also removes files added since).
box-prompt-model-soup: $(STAMP) fresh
	$(synth_rich)
	rm -rf build/grounding-rl-start build/runs/grpo-n build/runs/grpo-o build/runs/grounding-soup build/eval/grounding-soup-*
	$(call grounding_copy,build/grounding-rl-start)
	$(PY) -m vlmsam train configs/box_prompt_tiny_grpo.yaml train.steps_per_epoch=1200 train.seed=8 \
		train.run_dir=build/runs/grpo-n --overwrite
	$(PY) -m vlmsam train configs/box_prompt_tiny_grpo.yaml train.steps_per_epoch=1200 train.seed=9 \
		data.synth_extra_kind_weights="uniqueness=0.3,none=0.4" train.run_dir=build/runs/grpo-o --overwrite
	$(PY) -c "from tools.bundles import soup; soup(['build/runs/grpo-n/final', 'build/runs/grpo-o/final'], \
		'build/runs/grounding-soup/final', trained=('vlm',))"
	cp build/runs/grpo-o/config.yaml build/runs/grounding-soup/config.yaml
	$(call eval_splits,grounding-soup,build/runs/grounding-soup/final)
	$(PY) -c "from tools.rl_bundle import install_if_better; install_if_better('build/runs/grounding-soup', \
		'$(WEIGHTS)/vlmsam-tiny-grounding', 'build/eval/grounding-soup-original', made_by='two GRPO runs from it \
		through its own SAM (configs/box_prompt_tiny_grpo.yaml, 1,200 steps: seed 8; seed 9 with none=0.4), averaged \
		(make box-prompt-model-soup)')"

# Stage 6 of vlmsam-tiny-grounding (about 40 minutes on 2 cores): a SAM halfway between vlmsam-tiny's, whose masks
# spill onto neighbours, and vlmsam-tiny-llmseg's point-trained one, which draws exactly the shape under a point
# (tools.bundles.interpolate, weight by weight; docs/rl.md), then GRPO from the installed bundle through it (run S:
# seed 12, more no-target requests), evaluated on the three splits and installed, with that SAM, if better. It starts
# from the installed bundle: to rebuild today's, first put the soup's back (`git restore --source=caabc26 --worktree
# --staged -- src/vlmsam/weights/vlmsam-tiny-grounding docs/bundled/vlmsam-tiny-grounding`).
box-prompt-model-sam-mid: $(STAMP) fresh
	$(synth_rich)
	rm -rf build/grounding-rl-start build/grounding-sam-mid build/runs/grpo-s build/eval/grounding-grpo-s-*
	$(call grounding_copy,build/grounding-rl-start)
	$(PY) -c "from tools.bundles import interpolate; interpolate('$(WEIGHTS)/vlmsam-tiny/sam', \
		'$(WEIGHTS)/vlmsam-tiny-llmseg/sam', 'build/grounding-sam-mid', 0.5)"
	$(PY) -m vlmsam train configs/box_prompt_tiny_grpo.yaml train.steps_per_epoch=1200 train.seed=12 \
		data.synth_extra_kind_weights="uniqueness=0.3,none=0.4" model.sam=build/grounding-sam-mid \
		train.run_dir=build/runs/grpo-s --overwrite
	$(call eval_splits,grounding-grpo-s,build/runs/grpo-s/final)
	$(PY) -c "from tools.rl_bundle import install_if_better; install_if_better('build/runs/grpo-s', \
		'$(WEIGHTS)/vlmsam-tiny-grounding', 'build/eval/grounding-grpo-s-original', made_by='GRPO from it through \
		the SAMs of vlmsam-tiny and vlmsam-tiny-llmseg averaged half and half (configs/box_prompt_tiny_grpo.yaml, \
		1,200 steps, seed 12, none=0.4), installed with that SAM (make box-prompt-model-sam-mid)')"

# Stage 3 of vlmsam-tiny-grounding (about 25 minutes on 2 cores): the installed bundle fine-tuned on requests in the
# rich grammar's wordings (configs/box_prompt_tiny_phrasing.yaml), exported, evaluated on the three splits, installed.
box-prompt-model-phrasing: $(STAMP) fresh
	$(synth_rich)
	rm -rf build/grounding-start build/runs/box-prompt-tiny-phrasing build/vlmsam-tiny-grounding
	$(call grounding_copy,build/grounding-start)
	$(PY) -m vlmsam train configs/box_prompt_tiny_phrasing.yaml --overwrite
	$(PY) -c "from tools.default_model import export_box_prompt; export_box_prompt('build/runs/box-prompt-tiny-phrasing', \
		'build/vlmsam-tiny-grounding')"
	$(call eval_splits,vlmsam-tiny-grounding,build/vlmsam-tiny-grounding)
	$(call install_if_better,vlmsam-tiny-grounding,build/vlmsam-tiny-grounding,sam)

# The proposal_select design's offline default, selector llmseg (about 30 minutes on 2 cores, then its wording stage and soup): vlmsam-tiny's SAM
# with its multimask outputs and IoU head trained (what automatic mask generation ranks by), a tiny DINOv2
# pre-trained densely here, automatic proposals over 2,000 training scenes (two processes under torchrun), the
# selection head trained over them on vlmsam-tiny's frozen VLM (configs/llmseg_tiny.yaml), exported to
# build/vlmsam-tiny-llmseg and evaluated on the fresh test scenes; its VLM is vlmsam-tiny's, shared.
# docs/vlmsam-tiny.md has the runs.
LLMSEG_ENV := OMP_NUM_THREADS=1
llmseg-model: $(STAMP)
	rm -rf build/llmseg build/runs/llmseg-tiny
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
	$(call unshare_dependents,vlmsam-tiny-llmseg)
	rm -rf $(WEIGHTS)/vlmsam-tiny-llmseg && cp -r build/vlmsam-tiny-llmseg $(WEIGHTS)/
	$(call share_parts,vlmsam-tiny-llmseg,vlm)
	$(MAKE) llmseg-model-phrasing
	$(MAKE) llmseg-model-soup

# The starting head (the installed one), 2,500 rich-worded scenes (seed 11), the VLM and their automatic proposals.
llmseg_phrasing_data = rm -rf build/llmseg-phrasing && \
	$(PY) -c "from tools.bundles import standalone_copy; standalone_copy('$(WEIGHTS)/vlmsam-tiny-llmseg', 'build/llmseg-phrasing/start')" && \
	$(PY) -m vlmsam data synth --out build/llmseg-phrasing/synth --n 2500 --seed 11 --phrasing rich && \
	$(PY) -c "from vlmsam.seg_token import SegTokenModel; SegTokenModel.from_pretrained('$(WEIGHTS)/vlmsam-tiny').save_merged('build/llmseg-phrasing/vlm')" && \
	$(LLMSEG_ENV) $(VENV)/bin/torchrun --nproc_per_node=2 -m vlmsam proposals --dataset-dir build/llmseg-phrasing/synth \
		--datasets reason_seg:train --out build/llmseg-phrasing/proposals --sam build/llmseg-phrasing/start/sam \
		--points-per-side 16 --pred-iou-thresh 0.7 --stability-score-thresh 0.85

# Stage 2 of vlmsam-tiny-llmseg (about 30 minutes on 2 cores): the installed selection head trained further over
# vlmsam-tiny's VLM as installed now (after its wording stage), on scenes in the rich grammar's wordings, with their
# automatic proposals (configs/llmseg_tiny_phrasing.yaml); exported, evaluated on the three splits, installed.
llmseg-model-phrasing: $(STAMP) fresh
	rm -rf build/runs/llmseg-tiny-phrasing build/vlmsam-tiny-llmseg
	$(llmseg_phrasing_data)
	$(PY) -m vlmsam train configs/llmseg_tiny_phrasing.yaml --overwrite
	$(PY) -c "from tools.default_model import export_llmseg; export_llmseg('build/runs/llmseg-tiny-phrasing', 'build/vlmsam-tiny-llmseg', select_single=True)"
	$(call eval_splits,vlmsam-tiny-llmseg,build/vlmsam-tiny-llmseg)
	$(call install,vlmsam-tiny-llmseg,build/vlmsam-tiny-llmseg,vlm)

# Stage 3 of vlmsam-tiny-llmseg (about 30 minutes on 2 cores): two more runs of stage 2's config from the installed
# head (seeds 1 and 2), averaged with it weight by weight (tools.bundles.soup), evaluated on the three splits and
# installed only if the sum of its gIoU beats the installed bundle's.
llmseg-model-soup: $(STAMP) fresh
	rm -rf build/runs/llmseg-s1 build/runs/llmseg-s2 build/llmseg-s1 build/llmseg-s2 build/llmseg-soup
	$(llmseg_phrasing_data)
	for s in 1 2; do $(PY) -m vlmsam train configs/llmseg_tiny_phrasing.yaml train.seed=$$s \
		train.run_dir=build/runs/llmseg-s$$s --overwrite && $(PY) -c "from tools.default_model import export_llmseg; \
		export_llmseg('build/runs/llmseg-s'+'$$s', 'build/llmseg-s'+'$$s', select_single=True)" || exit 1; done
	$(PY) -c "from tools.bundles import soup; soup(['build/llmseg-phrasing/start', 'build/llmseg-s1', 'build/llmseg-s2'], \
		'build/llmseg-soup', made_by='averaged with two further runs of configs/llmseg_tiny_phrasing.yaml from it, seeds 1 and 2 (make llmseg-model-soup)')"
	$(call eval_splits,vlmsam-tiny-llmseg,build/llmseg-soup)
	$(call install_if_better,vlmsam-tiny-llmseg,build/llmseg-soup,vlm)

# grounded's offline default (weights/sam3-tiny, about an hour on 2 cores): a tiny transformers Sam3Model trained from
# random weights on noun phrases over synthetic scenes (configs/sam3_tiny.yaml), scored per instance on the 500 fresh
# test scenes, installed with its figures (tools/sam3_bundle.py).
sam3-model: $(STAMP) build/fresh-original
	$(synth_rich)
	$(PY) -m vlmsam train configs/sam3_tiny.yaml --overwrite
	$(PY) -m tools.sam3_bundle threshold build/runs/sam3-tiny/checkpoints/step_005000 build/synth-rich
	$(PY) -m vlmsam evaluate --model build/runs/sam3-tiny/checkpoints/step_005000 --dataset phrases:test \
		--dataset-dir build/fresh-original --out build/eval/sam3-tiny
	$(PY) -m tools.sam3_bundle build/runs/sam3-tiny/checkpoints/step_005000 $(WEIGHTS)/sam3-tiny build/eval/sam3-tiny \
		docs/bundled/sam3-tiny

# Rebuilds the bundled agent-tiny (weights/agent-tiny, about 100 minutes on 2 CPU cores): teacher traces of 8,000
# rich-worded training scenes through the real loop with the bundled tiny SAM 3 as the tool, the tiny VLM taught
# them (run A, tools/agent_default.py), then taught further on 16,000 scenes' traces at half the rate (run B),
# bundled, then evaluated on the 500 fresh test scenes (docs/agent.md).
agent-model: $(STAMP) build/fresh-original
	$(synth_rich)
	$(PY) -m tools.agent_default train build/synth-rich build/runs/agent-tiny --scenes 8000 --steps 4000
	$(PY) -m tools.agent_default train build/synth-rich build/runs/agent-tiny-b --scenes 16000 --steps 2500 --lr 2.5e-4 \
		--base build/runs/agent-tiny/vlm
	$(PY) -m tools.agent_default bundle build/runs/agent-tiny-b $(WEIGHTS)/agent-tiny
	$(PY) -m vlmsam evaluate --model $(WEIGHTS)/agent-tiny --dataset reason_seg:test --dataset-dir build/fresh-original \
		--out build/eval/agent-tiny
	$(PY) -c "from tools.bundles import file_evaluation; file_evaluation('build/eval/agent-tiny', '$(WEIGHTS)/agent-tiny')"

# Every CPU benchmark (bench_gpu.py has its own target: it needs CUDA).
bench: $(STAMP)
	@for b in benchmarks/bench_*.py; do [ "$$b" = benchmarks/bench_gpu.py ] && continue; echo "== $$b"; $(PY) $$b || exit 1; done

# Qwen2.5-VL-7B + SAM ViT-H shapes in bf16 on one GPU (about 5 minutes); says so and exits 0 without CUDA.
bench-gpu: $(STAMP)
	$(PY) benchmarks/bench_gpu.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
