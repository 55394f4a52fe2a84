# Entry points. `make setup test` on a fresh clone; `make help` lists the targets.
PY := .venv/bin/python
PYTEST := $(PY) -m pytest -q
STANDALONE := $(PY) -m dlspark.spark.standalone

.PHONY: help setup demo test test-fast lint cluster-up cluster-down cluster-status clean-data

help:
	@echo "make setup         create .venv with dlspark and its extras (./setup.sh)"
	@echo "make demo          prepare data, ingest images + text, train + register both models, score both test splits,"
	@echo "                   export both to ONNX (image also TorchScript), score 2000 replayed tweets as a stream"
	@echo "make test          all tests except gpu (starts a local standalone cluster for 'cluster' tests)"
	@echo "make test-fast     tests not marked slow, cluster or gpu"
	@echo "make lint          ruff check lib jobs pipelines tests bench notebooks"
	@echo "make cluster-up    Spark standalone on spark://127.0.0.1:7077 (2 workers x 1 core, 1g), UI :8080"
	@echo "make cluster-down  stop it; cluster-status shows it"
	@echo "make clean-data    rm -rf data"

setup:
	./setup.sh

demo: setup
	$(PY) jobs/prepare_demo_data.py
	./spark-submit.sh jobs/ingest_images.py
	./spark-submit.sh jobs/ingest_text.py
	./spark-submit.sh jobs/train.py --pipeline image_classification
	./spark-submit.sh jobs/train.py --pipeline sentiment
	./spark-submit.sh jobs/batch_inference.py --pipeline image_classification --set inference.split=test --max-accuracy-gap 0.002
	./spark-submit.sh jobs/batch_inference.py --pipeline sentiment --set inference.split=test --max-accuracy-gap 0.002
	$(PY) jobs/models.py export-onnx
	$(PY) jobs/models.py --pipeline sentiment export-onnx
	$(PY) jobs/models.py export-torchscript
	./spark-submit.sh jobs/batch_inference.py --pipeline image_classification --set inference.split=test \
		--set inference.model=dlspark-fashion-mnist-onnx --max-accuracy-gap 0.002
	test -e data/landing/stream/demo-000000.jsonl || \
		$(PY) jobs/replay_tweets.py --limit 2000 --rate 100 --no-pace --malformed 0.01 --prefix demo
	./spark-submit.sh jobs/stream_sentiment.py --pipeline sentiment --available-now

test:
	$(PYTEST) -m "not gpu"

test-fast:
	$(PYTEST) -m "not slow and not cluster and not gpu"

lint:
	$(PY) -m ruff check lib jobs pipelines tests bench notebooks

cluster-up:
	$(STANDALONE) up --workers 2 --cores 1 --memory 1g

cluster-down:
	$(STANDALONE) down

cluster-status:
	$(STANDALONE) status

clean-data:
	rm -rf data
