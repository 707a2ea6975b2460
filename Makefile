# Two commands on a fresh machine: `make run` (the whole stack, zero setup) and `make test` (the test suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-fast lint migrate venv clean

$(STAMP): requirements.txt requirements-dev.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { echo "python3 -m venv failed: on Debian/Ubuntu run 'apt-get install python3-venv'"; exit 1; }
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	@touch $(STAMP)

venv: $(STAMP)

# DJANGO_DEBUG defaults to on for `make run` only: it lets the dev keys be generated under var/.
migrate: venv
	DJANGO_DEBUG=$${DJANGO_DEBUG:-1} $(BIN)/python manage.py migrate --noinput

# make run: the whole stack on this machine (Procfile.dev) against the sandbox exchange, with the demo story.
# RECONCILE_AUDIT_SEC=0: the story's last chapter (a fill the connected stream never delivered) is found by the
# periodic reconcile within its minute; production audits an account with a healthy stream every 600 s.
# Ports: SANDBOX_PORT=9900 WEB_PORT=8000 make run. DATABASE_URL / CELERY_BROKER_URL pass through (default: SQLite and
# the filesystem broker under TRADEOPS_VAR_DIR, ./var). Binance's URLs are pinned to the sandbox here, never in a
# Procfile, so production (Procfile) talks to whatever its environment says.
SANDBOX_PORT ?= 9900
WEB_PORT ?= 8000
RUN_ENV = DJANGO_DEBUG=$${DJANGO_DEBUG:-1} PYTHONUNBUFFERED=1 PATH="$(abspath $(BIN)):$$PATH" \
	SANDBOX_PORT=$(SANDBOX_PORT) WEB_PORT=$(WEB_PORT) \
	BINANCE_FUTURES_REST_URL=http://127.0.0.1:$(SANDBOX_PORT) BINANCE_FUTURES_WS_URL=ws://127.0.0.1:$(SANDBOX_PORT) \
	BINANCE_FUTURES_TESTNET_REST_URL=http://127.0.0.1:$(SANDBOX_PORT) \
	BINANCE_FUTURES_TESTNET_WS_URL=ws://127.0.0.1:$(SANDBOX_PORT) \
	USER_STREAM_BACKOFF_MAX_SEC=$${USER_STREAM_BACKOFF_MAX_SEC:-5} \
	USER_STREAM_ACCOUNT_REFRESH_SEC=$${USER_STREAM_ACCOUNT_REFRESH_SEC:-5} \
	RECONCILE_AUDIT_SEC=$${RECONCILE_AUDIT_SEC:-0}

run: migrate
	@$(RUN_ENV) $(BIN)/python manage.py dev_setup --admin-url http://127.0.0.1:$(WEB_PORT)/admin/
	$(RUN_ENV) exec $(BIN)/honcho start -f Procfile.dev

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# make test-fast: the inner loop, under a minute on 2 cores — everything but the end-to-end stack (tests/e2e), the
# browser test and the tests marked slow (seconds of real time each: a real Celery worker or another process, a lease,
# a ban or a Retry-After waited out; the `make run` smoke test), with the property tests on Hypothesis's dev profile
# (a tenth of the examples, random, failures remembered under var/hypothesis; HYPOTHESIS_PROFILE=ci for CI's).
# `make test` stays the whole suite, every property on the ci profile (what CI runs).
test-fast: venv
	HYPOTHESIS_PROFILE=$${HYPOTHESIS_PROFILE:-dev} \
	$(BIN)/python -m pytest -q -m "not e2e and not browser and not slow" --ignore=tests/e2e $(PYTEST_ARGS)

# make lint: what to run before pushing (CI runs it too): ruff's lint rules, ruff's formatting, mypy with the Django and
# Celery stubs. Settings in pyproject.toml.
lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf var/celery-broker var/test
