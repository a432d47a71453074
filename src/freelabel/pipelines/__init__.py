"""Pipelines built on pretrained and trained models: search, detection, segmentation."""
