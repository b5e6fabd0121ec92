"""Differentially private training (Opacus DP-SGD) and the membership-inference check."""
