"""The 3D-QALAS sequence: timing presets and sidecar timing, the Bloch signal model, bounds.

Belongs here: anything that describes the acquisition or predicts its signal (seconds,
radians inside the model). Must not: fit, read files, or know about tissue classes.
"""
