"""The engine: sequences, paged KV cache, sampling, detokenization."""
