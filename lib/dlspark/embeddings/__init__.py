"""Embeddings of registered models and nearest-neighbour search over them (pure code: torch, numpy, faiss)."""
