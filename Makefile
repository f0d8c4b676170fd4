PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: quickstart test test-slow test-all install clean

# Create the virtualenv when missing and (re)install when requirements change.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	# timm is the reference of tests/test_pretrained_torch.py; without --no-deps it pulls a CUDA torch+torchvision.
	$(PY) -m pip install --no-deps "timm>=1.0,<2"
	$(PY) -m pip install --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

QUICKSTART_DIR ?= /tmp/mobilenets_jax_digits

# The offline quickstart: train on the embedded digits dataset, then evaluate the checkpoint.
quickstart: $(STAMP)
	$(PY) train.py --config=configs/digits.py --workdir=$(QUICKSTART_DIR)
	$(PY) eval.py --config=configs/digits.py --workdir=$(QUICKSTART_DIR)

# The tier everyone runs (under 10 minutes on 2 cores): everything but the tests marked slow.
test: $(STAMP)
	$(PY) -m pytest tests -m "not slow"

# The slow tier (CI runs it after `make test`): end-to-end CLI runs and fault injection, whole-model
# compiles, the sweep, fine-tuning and export over every architecture.
test-slow: $(STAMP)
	$(PY) -m pytest tests -m slow

test-all: $(STAMP)
	$(PY) -m pytest tests

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
