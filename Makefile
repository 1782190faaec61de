# Two commands for a newcomer: `make demo` (main job) and `make test` (suite).
# Both create or refresh .venv first; nothing is installed by hand.
# `make review` (after make demo): the moderators' review page on http://127.0.0.1:8090/.
SHELL := /bin/bash
PY := .venv/bin/python

.PHONY: venv demo review train-real tune bench bench-inputs bench-localize bench-quality bench-tune-workers image image-test image-ci deploy-check test test-fast lint serve stop key clean

venv:
	@scripts/setup_venv.sh

demo: venv  ## demo data -> train -> export -> .mar -> TorchServe -> curl verdicts
	@scripts/setup_fonts.sh
	@scripts/demo.sh

review: venv  ## the moderators' review page (starts TorchServe if it is not up; needs make demo first)
	@[ -f model_store/watermark.mar ] || { echo "error: model_store/watermark.mar not found: run make demo first" >&2; exit 1; }
	@scripts/serve.sh status >/dev/null 2>&1 || scripts/serve.sh start
	$(PY) -m review --host 127.0.0.1 --port 8090

train-real: venv  ## the real-data recipe on ../shared/digikala (DATA=...): train, register, .mar, evaluate, predict test/
	@scripts/train_real.sh

tune: venv  ## 20-trial Optuna study on the demo dataset (built if missing); see README "Tuning"
	@scripts/setup_fonts.sh
	@[ -f demo_data/manifest.json ] || $(PY) -m train demo-data demo_data --overwrite
	$(PY) -m train tune --data demo_data --output artifacts --n-trials 20

bench: venv  ## inference benchmark: raw backends, preprocessing, TorchServe end to end -> bench/results.md
	$(PY) scripts/bench.py --out bench/results.md

bench-inputs: venv  ## worst-case inputs: decode memory and time per image, also against the running server (make serve first)
	$(PY) scripts/bench_inputs.py --served --out bench/inputs.md

bench-localize: venv  ## pointing game: does the /explanations map peak on the mark? (synthetic marks on the demo's test photos)
	$(PY) scripts/bench_localize.py --out bench/localize.md

bench-quality: venv  ## train on the demo split, evaluate on test / held-out styles / hard negatives
	@scripts/setup_fonts.sh
	$(PY) scripts/bench_quality.py --out bench/quality

bench-tune-workers: venv  ## trials per hour with 1 and 2 tune workers on one study: make bench-tune-workers STORAGE=postgresql://USER@HOST/DB
	@[ -n "$(STORAGE)" ] || { echo "error: set STORAGE=postgresql://USER@HOST:PORT/DB (a database the workers share; see README \"One study on many machines\")" >&2; exit 2; }
	$(PY) scripts/bench_tune_workers.py --storage "$(STORAGE)" $(if $(TRACKING),--tracking-uri "$(TRACKING)") --out bench/tune_workers.md

test: venv  ## the whole suite (unit + integration with a real TorchServe, PostgreSQL and MLflow server; the review page's test in headless Chromium)
	@scripts/setup_test_system.sh
	$(PY) -m pytest -q

test-fast: venv  ## unit tests only
	$(PY) -m pytest -q -m "not integration"

image: venv  ## serving image with podman from a local debootstrap base (needs model_store/watermark.mar)
	@scripts/build_image.sh

image-test: venv  ## start the image on loopback ports, check verdicts, a bad body, metrics, UID and a drained SIGTERM
	@scripts/image_test.sh

image-ci: venv  ## CI's container step: image around an untrained model (build/ci), then image-test against it
	@scripts/image_ci.sh

deploy-check: venv  ## validate deploy/ (KServe and Kubernetes manifests) against the API models and this image's rules
	$(PY) scripts/validate_deploy.py

lint: venv
	.venv/bin/hadolint Dockerfile

serve: venv
	@scripts/serve.sh start

stop:
	@scripts/serve.sh stop

key:
	@scripts/serve.sh key

clean:  ## remove generated data and artifacts (keeps .venv)
	rm -rf artifacts demo_data logs model_store/*.mar

load-test: venv  ## 32 clients x 60 s against the running server (make serve first); see scripts/load_test.py
	$(PY) scripts/load_test.py --clients 32 --duration 60 --warmup 10

models: venv  ## versions, default and workers of the running server (scripts/manage_models.py --help)
	$(PY) scripts/manage_models.py list
