"""Data: finding image files, decoding (with its cache), twins, augmentation, the synthetic set, download, audit."""
