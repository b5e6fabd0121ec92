"""Prefect 3 flows and deployments. They wire the same component functions the DVC stages call
(``components.data.ingest.ingest``, ``components.data.preprocess.preprocess``, ...) and hold no
stage logic of their own. The pipeline flow arrives with the orchestration work; nothing here runs
at import time."""
