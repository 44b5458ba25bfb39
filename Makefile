# Set-up and checks. `make demo` and `make test` work from a fresh clone.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.stormfold-installed

.PHONY: install demo test bench clean napari-display

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, so the package's torch range is already satisfied by the CPU build
	$(BIN)/pip install "$(TORCH_SPEC)"
	$(BIN)/pip install -e '.[test,napari]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/stormfold demo --out demo_output

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

# Optional: an X server for the napari canvas in headless tests (Debian/Ubuntu, as root).
# Without it the napari tests run on the viewer model and skip the screenshot check.
napari-display:
	command -v Xvfb >/dev/null || (apt-get update && apt-get install -y xvfb)

clean:
	rm -rf $(VENV) demo_output build dist src/*.egg-info
