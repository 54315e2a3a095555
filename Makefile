# Two commands: `make run [PROFILE=smoke|workshop|default|cpu-full|cpu-long|gpu|paper] [RESUME=<run-id> [FROM=<notebook>] | TRAINED=<run-id>] [EVALS_FROM=<run-id>|results/<export>] [STOP_BY=<when>]` and `make test`.
PROFILE ?= default
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export TOKENIZERS_PARALLELISM ?= false
# tcmalloc where Debian's libtcmalloc-minimal4 is installed: CPU training 1.55x faster than under glibc's malloc,
# which hands large tensors back to the kernel and faults them in again at every step (bench train, AVX2)
TCMALLOC := $(firstword $(wildcard /usr/lib/*/libtcmalloc_minimal.so.4))

.PHONY: run test setup assets clean

# The venv is rebuilt only when the pins change; a set-up machine starts working within seconds.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name python3 > /dev/null
	touch $(STAMP)

setup: $(STAMP)

assets: $(STAMP)
	$(PY) -m slmlib assets fetch

run: assets
	$(if $(TCMALLOC),LD_PRELOAD=$(TCMALLOC)) $(PY) -m slmlib run --params params/$(PROFILE).yaml $(if $(RESUME),--resume $(RESUME)) $(if $(FROM),--from $(FROM)) $(if $(TRAINED),--trained-from outputs/$(TRAINED)) $(if $(EVALS_FROM),--evals-from $(if $(findstring /,$(EVALS_FROM)),$(EVALS_FROM),outputs/$(EVALS_FROM))) $(if $(STOP_BY),--stop-by $(STOP_BY))

test: assets
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

clean:
	rm -rf $(VENV)
