"""Compression of trained models: int8 quantisation, pruning, their storage, the compress stage."""
