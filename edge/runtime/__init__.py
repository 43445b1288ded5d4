"""The device runtime: capture -> detect -> classify -> track -> publish, plus the model store.

Runs on the Pi as the systemd service. It never imports :mod:`edge.tools`, ``train_export``, TensorFlow, Keras,
JAX, PyTorch or matplotlib (``tests/project/test_architecture.py`` checks this statically).
"""
