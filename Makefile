# posekit developer commands. `make test` is what CI runs (.ci/run).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.posekit-installed

.PHONY: test install demo clean

install: $(STAMP)

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip >/dev/null
	$(PY) -m pip install -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

# The main experiment on the default preset (< 20 min on 2 CPU cores): trains, evaluates, prints the
# results table and leaves runs/demo/{results.md,results.json,saved_model}. Motion: ../shared/data/cmu_mocap
# when present (else procedural), tested on ../shared/data/cmu_mocap_test when present (else on procedural
# test subjects). Re-running continues/reuses runs/demo (--resume); delete the folder for a fresh run.
TEST_MOCAP := $(wildcard ../shared/data/cmu_mocap_test)
demo: $(STAMP)
	$(PY) -m experiments.metrabs_acae --preset=default --out runs/demo --resume \
		$(if $(TEST_MOCAP),--test-mocap-dir=$(TEST_MOCAP))

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
