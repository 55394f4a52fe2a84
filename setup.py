"""Packaging for dlspark: Spark-native ingest, training and inference for deep learning.

Install for development with ``./setup.sh`` (what ``make setup`` runs), which applies
``constraints/classic.txt`` (``STACK=modern``: ``constraints/modern.txt``). Extras: torch, tf, horovod,
petastorm, connect, delta, mlflow, onnx, serve, tune, explain, embed, dev.
"""
from setuptools import find_packages, setup

EXTRAS = {
    "torch": ["torch>=2.1"],
    "tf": ["tensorflow-cpu>=2.16"],
    "horovod": ["horovod==0.28.1"],
    # petastorm 0.13.1 pins setuptools<70 (it never imports setuptools) while torch>=2.6 needs
    # setuptools>=77, so pip cannot resolve both: setup.sh installs petastorm itself with --no-deps
    # and this extra carries its real runtime dependencies.
    "petastorm": ["dill>=0.2.1", "diskcache>=3.0.0", "future>=0.10.2", "psutil>=4.0.0", "pyzmq>=14.0.0", "six>=1.5.0", "packaging>=15.0"],
    # Spark Connect client (pyspark 4: SparkSession.builder.remote("sc://..." or "local[2]")).
    "connect": ["pyspark[connect]>=4.0"],
    "delta": ["deltalake>=1.0"],
    "mlflow": ["mlflow>=3.0", "matplotlib>=3.7", "scikit-learn>=1.3"],   # reports: plots and per-class metrics
    # ONNX export of image models (torch's TorchScript exporter, so no onnxscript) and onnxruntime inference.
    "onnx": ["onnx>=1.16", "onnxruntime>=1.18"],
    # REST serving (jobs/serve.py): httpx is what FastAPI's TestClient and bench/serve_bench.py talk through.
    "serve": ["fastapi>=0.110", "uvicorn>=0.29", "uvloop>=0.19", "httptools>=0.6", "prometheus_client>=0.20", "httpx>=0.27"],
    # Hyperparameter search (jobs/tune.py): Optuna study on the driver, trials on Spark executors.
    "tune": ["optuna>=4"],
    # Explanations (jobs/explain.py): Captum's Integrated Gradients, run on the executors.
    "explain": ["captum>=0.7"],
    # Embeddings and nearest-neighbour search: faiss's HNSW index (dlspark.embeddings.ann).
    "embed": ["faiss-cpu>=1.8"],
    "dev": ["pytest>=8", "pytest-timeout", "ruff", "mypy", "types-PyYAML", "jupytext", "nbclient", "ipykernel"],
}

setup(
    name="dlspark",
    version="0.1.0",
    description="Spark-native distributed deep-learning pipeline: ingest, training, inference",
    python_requires=">=3.10",
    package_dir={"": "lib", "pipelines": "pipelines"},
    packages=find_packages("lib") + ["pipelines"],
    include_package_data=True,
    install_requires=[
        "pyspark>=3.5",
        "pyarrow>=12",
        "numpy>=1.23",
        "pandas>=2.0",
        "pillow>=10",
        "pyyaml>=6",
        "fsspec>=2023.1",
        "transformers>=4.40",
        "tokenizers>=0.19",
    ],
    extras_require=EXTRAS,
)
