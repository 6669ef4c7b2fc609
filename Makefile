# zeroseg: two commands do everything on a fresh machine.
#   make demo   set up .venv if needed (torch and the package), then run the main job on ShapeWorld
#   make test   set up .venv if needed (also the dev and web extras), then run the test suite
#   make serve  the same .venv as make test, then the web page on the models make demo trained
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo demo-ablations benchmark benchmark-third benchmark-drawn benchmark-full dev-check test lint format bench clean venv .venv serve

# Stamps: what is installed in .venv (make demo needs only the first).
CORE := $(VENV)/.installed-core
FULL := $(VENV)/.installed-full

# What make demo needs: torch and the package. Re-runs when pyproject.toml changes.
# --no-compile: pip would byte-compile every installed module (all of torch, transformers,
# scipy...), most of which a demo never imports: make demo's set-up took 55-60 s with it and
# 26-29 s without (docs/benchmarks.md, session 31); Python compiles the modules a run imports
# when it first imports them (and caches them unless PYTHONDONTWRITEBYTECODE is set).
$(CORE): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --no-compile torch==2.13.0
	$(BIN)/python -m pip install --quiet --no-compile -e .
	# open_clip ships CLIP's BPE vocabulary; taken for that data file only, never imported.
	$(BIN)/python -m pip install --quiet --no-compile --no-deps open_clip_torch
	@touch $@

# Also the dev extra (pytest, ruff, pycocotools, selenium...) and the web extra (Gradio), which
# make test and zeroseg serve need and make demo does not. Then everything is byte-compiled on
# all cores: the test suite starts many Python processes, which would otherwise each compile what
# they import where bytecode is not cached (PYTHONDONTWRITEBYTECODE). torch ships one test file
# only Python 3.12 parses; it is skipped, as pip's own compile step skips it.
$(FULL): $(CORE)
	$(BIN)/python -m pip install --quiet --no-compile -e '.[dev,web]'
	$(BIN)/python -m compileall -q -j 0 -x '/torch/testing/_internal/py312_intrinsics\.py$$' $(VENV)/lib
	@touch $@

venv .venv: $(FULL)

# The shipped ShapeWorld worlds beside the default one (second, third; dev for val-only checks).
WORLDS := src/zeroseg/data/shapeworld/worlds

# SAZS's eigen-segment fusion also applied, at inference, to the projection baseline's and ZS3Net's
# models (the rows projection+spectral and zs3net+spectral).
REFINE = --refine spectral --refine-on projection zs3net

# --jobs 2: two rows at once, each on half the threads (docs/benchmarks.md, "Two rows at once").
demo: $(CORE)
	$(BIN)/zeroseg demo --quick --jobs 2 --out runs/demo $(REFINE)

serve: $(FULL)
	$(BIN)/zeroseg serve

demo-ablations: $(CORE)
	$(BIN)/zeroseg demo --quick --jobs 2 --out runs/demo-ablations --ablations $(REFINE)

# 3 seeds on the default world and on the second shipped world (no preset was tuned on it;
# every seed's rows in one queue of two one-thread workers; 47:32 on 2 cores with AMX-BF16 in
# session 48, 58 min with AVX512-BF16 in session 34: docs/benchmarks.md, session 34):
# mean ± std and the like-for-like gaps beyond the spread, in runs/benchmark/*/report.md.
# README's headline table: benchmarks/readme_tables.py runs/benchmark/{default,second,third} --pairs
# with the pairs README lists beside it.
benchmark: $(CORE)
	$(BIN)/zeroseg demo --quick --jobs 2 --seeds 0 1 2 --out runs/benchmark/default $(REFINE)
	$(BIN)/zeroseg demo --quick --jobs 2 --seeds 0 1 2 --out runs/benchmark/second $(REFINE) \
		--world $(WORLDS)/second.yaml

# The same 3 seeds on a third world no preset was tuned on, of another make than the other three
# (worlds/third.yaml: 4 colours x 6 shapes, 2-5 objects per image, 8 of 30 classes unseen; made in
# session 40), in runs/benchmark/third/report.md. 22 min in session 48, 29 in session 40.
benchmark-third: $(CORE)
	$(BIN)/zeroseg demo --quick --jobs 2 --seeds 0 1 2 --out runs/benchmark/third $(REFINE) \
		--world $(WORLDS)/third.yaml

# The same 3 seeds on a world nobody chose anything on, drawn at random within the foundation's
# range (zeroseg world --draw; the same SEED, the same world): make benchmark-drawn SEED=N writes
# runs/worlds/drawn-N.yaml (left as it is when it already holds that draw) and the report in
# runs/benchmark/drawn-N. Seeds 53, 54 and 55 draw the shipped worlds/drawn-5N.yaml (26:31, 22:59
# and 23:07 in session 53, one at a time; docs/results.md, "Three worlds drawn at random").
SEED ?= 53
benchmark-drawn: $(CORE)
	$(BIN)/zeroseg world --draw $(SEED) --out runs/worlds/drawn-$(SEED).yaml
	$(BIN)/zeroseg demo --quick --jobs 2 --seeds 0 1 2 --out runs/benchmark/drawn-$(SEED) $(REFINE) \
		--world runs/worlds/drawn-$(SEED).yaml

# The presets' full schedule (no --quick: gamma on all 500 val images, all 500 test images scored),
# 3 seeds, on the three test worlds: the pixel rows, the mask family, and ZegCLIP with its two
# baselines on the third world (docs/results.md, "The mask family at its full schedule" and "The other rows
# at their full schedule"; sessions 45-46 ran these commands one at a time: 3 h 03 min summed on the
# AMD EPYC VM of those sessions). Longer than CI's budget, so no CI job runs it. Print the tables with
# python benchmarks/readme_tables.py runs/benchmark-full/pixel-* --by-seed --over-images (and mask-*, zegclip-third).
FULL_PIXEL := projection zs3net zs5net sazs sazs-nofusion
FULL_MASK := mask-projection pading alignzeg
benchmark-full: $(CORE)
	$(BIN)/zeroseg demo --jobs 2 --seeds 0 1 2 --methods $(FULL_PIXEL) $(REFINE) --out runs/benchmark-full/pixel-default
	$(BIN)/zeroseg demo --jobs 2 --seeds 0 1 2 --methods $(FULL_PIXEL) $(REFINE) --out runs/benchmark-full/pixel-second \
		--world $(WORLDS)/second.yaml
	$(BIN)/zeroseg demo --jobs 2 --seeds 0 1 2 --methods $(FULL_PIXEL) $(REFINE) --out runs/benchmark-full/pixel-third \
		--world $(WORLDS)/third.yaml
	$(BIN)/zeroseg demo --jobs 2 --seeds 0 1 2 --methods $(FULL_MASK) --out runs/benchmark-full/mask-default
	$(BIN)/zeroseg demo --jobs 2 --seeds 0 1 2 --methods $(FULL_MASK) --out runs/benchmark-full/mask-second \
		--world $(WORLDS)/second.yaml
	$(BIN)/zeroseg demo --jobs 2 --seeds 0 1 2 --methods $(FULL_MASK) --out runs/benchmark-full/mask-third \
		--world $(WORLDS)/third.yaml
	$(BIN)/zeroseg demo --jobs 2 --seeds 0 1 2 --methods projection-frozen zegclip projection-probe \
		--out runs/benchmark-full/zegclip-third --world $(WORLDS)/third.yaml

# Before a choice made on the default world's val reaches the benchmark: the same 3-seed demo on
# the development world's val split (worlds/dev.yaml; its test split is never loaded, and nothing
# is chosen on the second world), in runs/dev-check/report.md.
dev-check: $(CORE)
	$(BIN)/zeroseg demo --quick --jobs 2 --seeds 0 1 2 --split val --out runs/dev-check $(REFINE) \
		--world $(WORLDS)/dev.yaml

test: $(FULL)
	bash scripts/run_tests.sh

lint: $(FULL)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(FULL)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

bench: $(CORE)
	$(BIN)/zeroseg bench

clean:
	rm -rf runs .pytest_cache
