# Two commands on a fresh machine (see README.md):
#   make demo   install into .venv and run the offline demo against the fake warehouse
#   make test   install, lint, and run the whole test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
ORACLE_VENV ?= .venv-allensdk
DANDI_VENV ?= .venv-dandi
BIN := $(VENV)/bin

.PHONY: install demo test lint oracle dandi-oracle clean-demo

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip==25.3"
	$(BIN)/pip install --quiet -c constraints.txt -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/snakemake --cores 2 --configfile config/demo.yaml

# AllenSDK 2.16.2 is the independent judge of the fake warehouse and the synthetic files.
# It lives in its own virtualenv: its pins (numpy<1.24, pandas 1.5.3) clash with ours.
$(ORACLE_VENV)/.installed: tests/oracle/allensdk-constraints.txt
	$(PYTHON) -m venv $(ORACLE_VENV)
	$(ORACLE_VENV)/bin/pip install --quiet -c tests/oracle/allensdk-constraints.txt "allensdk==2.16.2" "hdmf<4"
	touch $@

oracle: $(ORACLE_VENV)/.installed

# DANDI's own client (the dandi package) judges the DANDI stand-in (tests/test_dandi_oracle.py).
# Its own virtualenv too: it pins numpy/pandas/h5py/pynwb versions of its own.
$(DANDI_VENV)/.installed: tests/oracle/dandi-constraints.txt
	$(PYTHON) -m venv $(DANDI_VENV)
	$(DANDI_VENV)/bin/pip install --quiet -c tests/oracle/dandi-constraints.txt "dandi==0.81.0"
	touch $@

dandi-oracle: $(DANDI_VENV)/.installed

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/snakemake --lint --configfile config/demo.yaml

test: install oracle dandi-oracle lint
	ALLENSDK_PYTHON=$(CURDIR)/$(ORACLE_VENV)/bin/python \
	DANDI_PYTHON=$(CURDIR)/$(DANDI_VENV)/bin/python PATH=$(CURDIR)/$(BIN):$$PATH \
		bash .ci/test-suite.sh

clean-demo:
	rm -rf resources results logs .snakemake
