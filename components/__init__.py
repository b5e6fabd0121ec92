"""All pipeline logic: typed functions and classes, no import-time side effects.

Stage CLIs (``pipelines/``) and Prefect flows (``flows/``) are thin callers of this package.
"""
