"""Weight quantization: int4 primitives, AWQ, calibration, perplexity."""
