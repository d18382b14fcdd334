"""braintumor: a Keras 3 experiment runner for brain MRI tumour classification."""

import os

# TensorFlow's C++ start-up chatter (oneDNN, CUDA probing) hides the run's own output; a user's
# own setting wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
