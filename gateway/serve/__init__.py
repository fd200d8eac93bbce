"""The hot path: pipeline, runtime, retries, streams, augmentation (templates, retrieval) and request-time routing."""
