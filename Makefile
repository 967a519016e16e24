# Two commands on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# the browser tests: Debian's chromium, playwright-core and typescript (package-lock.json);
# tests/browser also checks js/index.d.ts with tsc and packs, installs and imports js/
BROWSER := node_modules/.installed
ARGS ?=

.PHONY: run test lint bench clean redis-server nginx js cluster

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet --config-settings editable_mode=compat -e '.[test]'
	touch $@

$(BROWSER): package.json package-lock.json
	command -v chromium >/dev/null 2>&1 || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# the Redis tests start their own servers from Debian's redis-server (never its service)
redis-server:
	command -v redis-server >/dev/null 2>&1 || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server; }

# the front proxy's tests (and make cluster) run their own nginx with Debian's njs module
nginx:
	command -v nginx >/dev/null 2>&1 && test -e /usr/lib/nginx/modules/ngx_http_js_module.so || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		--no-install-recommends nginx libnginx-mod-http-js; }

# the npm package of the browser client, built from o2obroker/web/static/o2obroker.js
js: $(BROWSER)
	node_modules/.bin/tsc -p js
	mkdir -p build && cd js && npm pack --pack-destination ../build

run: $(STAMP)
	$(BIN)/twistd --nodaemon --pidfile= o2obroker $(ARGS)

# a local cluster to try: Redis, three nodes in two clusters, nginx in front; Ctrl-C stops all
cluster: $(STAMP) redis-server nginx
	BIN=$(BIN) etc/local-cluster.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

test: $(STAMP) $(BROWSER) redis-server nginx lint
	set -o pipefail; $(BIN)/python -m twisted.trial --jobs=2 tests 2>&1 | tee _trial.log
	@# trial's own closing line, restated in the plain form CI tools read
	@$(BIN)/python -c "$$TRIAL_SUMMARY" _trial.log

define TRIAL_SUMMARY
import re, sys
last = open(sys.argv[1]).read().strip().splitlines()[-1]
n = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", last)}
bad = n.get("failures", 0) + n.get("errors", 0) + n.get("unexpectedSuccesses", 0)
print(f"{n.get('successes', 0)} passed, {bad} failed, {n.get('skips', 0)} skipped")
endef
export TRIAL_SUMMARY

clean:
	rm -rf $(VENV) _trial_temp* _trial.log build *.egg-info node_modules js/index.js js/o2obroker.cjs
