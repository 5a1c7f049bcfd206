"""Data: scanning image folders, splits, decoding, caching and batched augmentation."""
