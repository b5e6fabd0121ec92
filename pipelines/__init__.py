"""One thin CLI per DVC stage. Each validates the whole ``params.yaml``, then calls one component."""
