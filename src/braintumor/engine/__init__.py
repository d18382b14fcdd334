"""Engine: training, runtime choices (precision, XLA), callbacks, the feature cache and evaluation."""
