"""Retrieval, pure of the gateway: embedders, the vector index and example indices (no import from the rest)."""
