# lumen-audio: `make demo` serves the bundled demo model, `make test` runs the whole suite.
# Both set themselves up on a fresh Debian machine with Python >= 3.11.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
SERVE_VENV ?= .venv-serve
EXTRAS ?= cpu,train,synth,dev
APT_PACKAGES := fluidsynth timgm6mb-soundfont
PYTEST_ARGS ?= -n 2

.PHONY: setup setup-serve apt test demo lint bench

apt:
	@if command -v fluidsynth >/dev/null 2>&1 && [ -f /usr/share/sounds/sf2/TimGM6mb.sf2 ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian packages: $(APT_PACKAGES)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PACKAGES) >/dev/null; \
	else \
		echo "FluidSynth and a General-MIDI soundfont are missing (needed by lumen-data synth and its tests). Run:"; \
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

demo: setup-serve
	$(SERVE_VENV)/bin/lumen-serve --model-dir models/demo --data-root data --port 8090

lint: setup
	$(VENV)/bin/ruff check common training export serving tests benchmarks
	$(VENV)/bin/ruff format --check common training export serving tests benchmarks

bench: setup
	$(VENV)/bin/python benchmarks/bench_decode.py
