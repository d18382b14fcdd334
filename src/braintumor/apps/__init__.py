"""Apps: what uses a trained run or many runs (predict, Grad-CAM, export, web demo, sweeps)."""
