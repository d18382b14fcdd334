"""Results: metrics, report files and run comparison. Reads run directories; no Keras or TensorFlow."""
