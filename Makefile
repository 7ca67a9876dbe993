# edgegw: `make demo` shows it working, `make test` proves it. Both set up what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Debian packages the tests use as real peers: the MQTT broker, pty pairs for RS-485, net-snmp's agent.
SYSTEM_PACKAGES := mosquitto socat snmpd
# `make deb` builds with dpkg-deb alone; lintian checks the result (tests/test_deb.py).
DEB_PACKAGES := lintian
DEB_DIR := build/deb

.PHONY: demo test lint typecheck unit system-deps bench lock clean deb

$(STAMP): requirements.lock pyproject.toml
	@# Debian splits venv out of the interpreter; install it when it is missing.
	$(PYTHON) -m venv $(VENV) || { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		$(SUDO) apt-get install -y -qq python3-venv >/dev/null && rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	@# The Sparkplug tests' decoder declares paho-mqtt<2 for a client they do not use (pyproject.toml).
	$(PY) -m pip install -q --no-deps pysparkplug==0.6.1
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

system-deps:
	@missing=""; \
	for p in $(SYSTEM_PACKAGES) $(DEB_PACKAGES); do \
		command -v $$p >/dev/null || [ -x /usr/sbin/$$p ] || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

demo: $(STAMP) system-deps
	$(VENV)/bin/edgegw demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP)
	$(VENV)/bin/pytest -q -m "not slow"

test: $(STAMP) system-deps lint typecheck deb
	EDGEGW_DEB="$$(ls -t $(DEB_DIR)/edgegw_*.deb | head -1)" $(VENV)/bin/pytest -q

# The Debian package, built from this checkout into $(DEB_DIR) (packaging/build-deb.sh says how).
deb: $(STAMP)
	rm -f $(DEB_DIR)/edgegw_*.deb
	PYTHON=$(PY) packaging/build-deb.sh $(DEB_DIR)

bench: $(STAMP) system-deps
	$(PY) bench/modbus_load.py --devices 100 --points 100 --interval 1 --duration 60

lock:
	$(PY) -m pip install -q pip-tools
	$(VENV)/bin/pip-compile -q --extra dev --strip-extras --no-emit-index-url -o requirements.lock pyproject.toml

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis build *.egg-info
