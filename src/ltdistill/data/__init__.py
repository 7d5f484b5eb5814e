"""Datasets, long-tailed splits, preprocessing and augmentation."""
