# rtmpq: the two commands a fresh Debian machine needs are `make up` and `make test`.
PYTHON ?= python3.12
VENV ?= .venv
PY := $(VENV)/bin/python
# System packages the tests use (publishers, players, containers; h2load for bench/bench_http.py).
SYSTEM_PACKAGES := ffmpeg gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good \
	gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav chromium buildah debootstrap \
	nghttp2-client redis-server

# The peers the benchmarks compare with (not needed by the tests).
BENCH_PACKAGES := nginx libnginx-mod-rtmp

.PHONY: install install-test system-deps bench-deps hlsjs up test test-compiled test-pure bench plots image image-test multihost fuzz fuzz-corpus wan soak clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

install: $(PY) hlsjs
	$(PY) -m pip install -q -e .

# hls.js for the edge's player page, from the npm registry (pinned version and SHA-512, not
# committed), as package data: rtmpq/edge/static/hls.min.js. setup.py fetches it the same way
# when it builds a wheel from a tree without it.
hlsjs: rtmpq/edge/static/hls.min.js
rtmpq/edge/static/hls.min.js: scripts/hlsjs.py
	$(PYTHON) scripts/hlsjs.py $@

install-test: $(PY) system-deps hlsjs
	$(PY) -m pip install -q -e '.[test]'

# Installs the Debian packages the tests need, only where they are missing.
system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $$missing; \
	fi

bench-deps:
	@missing=""; for p in $(BENCH_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $$missing; \
	fi

up: install
	$(VENV)/bin/rtmpq up

# The suite runs twice: against the compiled codecs, then against the pure-Python reference.
test: install-test
	$(MAKE) --no-print-directory test-compiled test-pure

# tests/test_container.py builds the node image (minutes): it runs under `make image-test`.
NOT_IN_SUITE := --ignore=tests/test_container.py
# Each pass runs its tests in this many processes (pytest-xdist). Most tests wait on real time
# (live publishes, players), not on the CPU: 3 workers on 2 cores take a pass from ~15 to ~5.5
# minutes (docs/benchmarks.md, "The whole suite"). TEST_WORKERS=0 runs a pass in one process.
TEST_WORKERS ?= 3
test-compiled:
	RTMPQ_REQUIRE_COMPILED=1 ./scripts/pytest-strict $(PY) tests $(NOT_IN_SUITE) -n $(TEST_WORKERS)

test-pure:
	RTMPQ_PUREPYTHON=1 ./scripts/pytest-strict $(PY) tests $(NOT_IN_SUITE) -n $(TEST_WORKERS)

# The node image built with buildah and run: `rtmpq up`, then the compose services.
image-test: install-test
	./scripts/pytest-strict $(PY) tests/test_container.py

# The node image (Containerfile) with buildah, on a Debian trixie base made with debootstrap.
image: system-deps hlsjs
	scripts/build-image

# Many hosts again and again: the network-namespace test and the directory tests (in `make test`
# once each), five rounds on each codec backend, to catch what is flaky under load. Needs root.
multihost: install-test
	for i in 1 2 3 4 5; do \
	  RTMPQ_REQUIRE_COMPILED=1 ./scripts/pytest-strict $(PY) tests/test_multihost.py tests/test_directory.py -q || exit 1; \
	  RTMPQ_PUREPYTHON=1 ./scripts/pytest-strict $(PY) tests/test_multihost.py tests/test_directory.py -q || exit 1; \
	done

bench: install-test bench-deps
	$(PY) -m pytest bench/bench_*.py --benchmark-only --benchmark-columns=min,median,rounds -s

# The peer plots (docs/plots/*.png): runs the benchmarks they come from, then draws them.
plots: install-test bench-deps
	$(PY) -m pip install -q -e '.[test,bench]'
	$(PY) -m pytest bench/bench_ingest.py bench/bench_relay.py bench/bench_hls_lag.py --benchmark-only -s
	$(PY) bench/plots.py

# Coverage-guided fuzzing (atheris), FUZZ_SECONDS per target; FUZZ_TARGETS to pick some.
# Crashes land in var/fuzz/crashes/ and make this target fail (see docs/reliability.md).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= $(shell PYTHONPATH=. $(PY) -m tests.fuzz.run --list 2>/dev/null)
fuzz: install-test
	@mkdir -p var/fuzz; failed=""; for t in $(FUZZ_TARGETS); do \
	  echo "== fuzz $$t ($(FUZZ_SECONDS) s, log var/fuzz/$$t.log)"; \
	  PYTHONPATH=. $(PY) -m tests.fuzz.run $$t --seconds $(FUZZ_SECONDS) >var/fuzz/$$t.log 2>&1 || failed="$$failed $$t"; \
	  grep -E '^(#[0-9]+ +DONE|==[0-9]+== ERROR|Traceback|.*Error:|stat::(number_of_executed|new_units))' var/fuzz/$$t.log; \
	done; [ -z "$$failed" ] || { echo "fuzz crashes in:$$failed (files in var/fuzz/crashes/)"; exit 1; }

# WAN profiles through rtmpq.netem with a per-object scoreboard, both QUIC backends, a 720p stream;
# the table goes into docs/reliability.md. WAN_SECONDS: stream length per profile. WAN_LAYOUT: apart
# (default: the subscriber and the proxy each in a child process, the relay alone in the parent),
# subscriber (both in one child), in-process (all on one event loop, as before 2026-11-28 09:00).
# WAN_BURNERS: child processes spinning a core each for the run (a busy host; at most one per core).
WAN_SECONDS ?= 20
WAN_LAYOUT ?= apart
WAN_BURNERS ?= 0
wan: install-test
	PYTHONPATH=. $(PY) -m tests.wan.scoreboard --seconds $(WAN_SECONDS) --layout $(WAN_LAYOUT) --cpu-burners $(WAN_BURNERS) --write-docs docs/reliability.md

# Soak: publishers that reconnect, subscriber and player churn, rotating impairment; samples every
# 30 s into var/soak/, plot and figures into docs/reliability.md.
MINUTES ?= 10
soak: install-test
	$(PY) -m pip install -q matplotlib
	PYTHONPATH=. $(PY) -m tests.wan.soak --minutes $(MINUTES) --write-docs docs/reliability.md

# Re-record the seed corpora from real publishes (ffmpeg, GStreamer, PyAV E-RTMP, OBS-shaped).
fuzz-corpus: install-test
	PYTHONPATH=. $(PY) -m tests.fuzz.capture

clean:
	rm -rf build $(VENV) rtmpq/*.so ext/*.c
