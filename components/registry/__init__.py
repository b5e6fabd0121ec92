"""MLflow Model Registry: package a trained model with its preprocessing, register it, gate ``champion``."""
