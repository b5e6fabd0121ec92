"""Data stages: ingest a source into ``data/raw`` and preprocess it into ``data/prepared``."""
