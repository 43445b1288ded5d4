"""From a trained Keras model to a device bundle: int8 quantization, the accuracy gate, the bundle writer."""
