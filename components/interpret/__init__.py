"""Attributions of trained models (Captum) and their faithfulness check: the ``explain`` stage."""
