"""The emotion classifier: a TFLite interpreter (LiteRT) over a validated model bundle."""
