"""Evaluation, batch prediction and Grad-CAM explanations of trained models and bundles."""
