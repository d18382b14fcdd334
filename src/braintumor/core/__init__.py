"""Core: errors, the config schema, the backbone registry (plain data), run-directory helpers.

No Keras or TensorFlow here: every layer may import core, and `validate` and `--help` stay fast.
"""
