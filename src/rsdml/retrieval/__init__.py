"""Neighbour search over embeddings (faiss)."""
