"""Datasets: COCO reading, augmentation presets, batching."""
