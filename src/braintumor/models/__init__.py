"""Models: Keras models built from the backbone registry (core/backbones.py)."""
