# Entry points. `make setup test` on a fresh clone; `make help` lists the targets.
# STACK=classic (default: pyspark 3.5, petastorm, .venv) or STACK=modern (pyspark 4.3 + Spark Connect, .venv-modern).
STACK ?= classic
ifeq ($(STACK),modern)
VENV := .venv-modern
# petastorm has no release for pyarrow >= 15: its tests skip themselves, and the demo's horovod run uses the arrow feeder.
DEMO_FEEDER := arrow
else
VENV := .venv
DEMO_FEEDER := petastorm
endif
PY := $(VENV)/bin/python
PYTEST := $(PY) -m pytest -q
STANDALONE := $(PY) -m dlspark.spark.standalone
export STACK

.PHONY: help setup demo test test-fast test-connect lint cluster-up cluster-down cluster-status clean-data

help:
	@echo "make setup         create .venv with dlspark and its extras (./setup.sh); STACK=modern: .venv-modern"
	@echo "make demo          prepare data, ingest images + text, train + register both models (and a 2-epoch horovod +"
	@echo "                   petastorm CNN as a candidate), score both test splits,"
	@echo "                   export both to ONNX (image also TorchScript), distil a small sentiment student from the"
	@echo "                   MiniLM champion (its row beside the teacher's), score 2000 replayed tweets as a stream,"
	@echo "                   then the drift and slice report of the sentiment test predictions and the explanation"
	@echo "                   pages of both champions (Integrated Gradients), and the image embeddings with their"
	@echo "                   nearest-neighbour index and the images most similar to one test image"
	@echo "make test          all tests except gpu (starts a local standalone cluster for 'cluster' tests)"
	@echo "make test-fast     tests not marked slow, cluster or gpu"
	@echo "make test-connect  the tests marked connect over Spark Connect (needs STACK=modern: pyspark 4 + grpc)"
	@echo "make lint          ruff check lib jobs pipelines tests bench notebooks; mypy lib (mypy.ini)"
	@echo "                   any target takes STACK=modern to use .venv-modern"
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
	./spark-submit.sh jobs/train.py --pipeline image_classification --set train.backend=horovod \
		--set train.feed.feeder=$(DEMO_FEEDER) --set train.epochs=2 --set train.run_name=horovod-$(DEMO_FEEDER)
	./spark-submit.sh jobs/train.py --pipeline sentiment
	./spark-submit.sh jobs/batch_inference.py --pipeline image_classification --set inference.split=test --max-accuracy-gap 0.002
	./spark-submit.sh jobs/batch_inference.py --pipeline sentiment --set inference.split=test --max-accuracy-gap 0.002
	$(PY) jobs/models.py export-onnx
	$(PY) jobs/models.py --pipeline sentiment export-onnx
	$(PY) jobs/models.py export-torchscript
	./spark-submit.sh jobs/train.py --pipeline sentiment_student
	$(PY) bench/distill_bench.py --tasks text --latency-rows 50 --out data/reports/distill-demo.json
	./spark-submit.sh jobs/batch_inference.py --pipeline image_classification --set inference.split=test \
		--set inference.model=dlspark-fashion-mnist-onnx --max-accuracy-gap 0.002
	test -e data/landing/stream/demo-000000.jsonl || \
		$(PY) jobs/replay_tweets.py --limit 2000 --rate 100 --no-pace --malformed 0.01 --prefix demo
	./spark-submit.sh jobs/stream_sentiment.py --pipeline sentiment --available-now
	./spark-submit.sh jobs/monitor.py --pipeline sentiment --set monitor.current=tables/predictions/dlspark-sentiment --no-fail
	./spark-submit.sh jobs/explain.py --pipeline image_classification
	./spark-submit.sh jobs/explain.py --pipeline sentiment --set explain.rows=50 --set explain.steps=16
	./spark-submit.sh jobs/embed.py --pipeline image_classification --similar-to auto

test:
	$(PYTEST) -m "not gpu"

test-fast:
	$(PYTEST) -m "not slow and not cluster and not gpu"

test-connect:
	DLSPARK_TEST_REMOTE="local[2]" $(PYTEST) -m "connect and not gpu" -W "ignore:Failed to set spark:UserWarning"

lint:
	$(PY) -m ruff check lib jobs pipelines tests bench notebooks
	$(PY) -m mypy

cluster-up:
	$(STANDALONE) up --workers 2 --cores 1 --memory 1g

cluster-down:
	$(STANDALONE) down

cluster-status:
	$(STANDALONE) status

clean-data:
	rm -rf data
