"""Benchmarks of what users get (LMDeploy's profile_generation / profile_throughput), and the random-weight
models of named shapes they run on without downloading anything.

    shapes.py               named Llama shapes (llama2-7b, llama3-8b, internlm2-7b, 1b, tiny) -> ModelConfig
    random_weights.py       seeded random layers, float16 or packed int4, made one block at a time
    synthetic_tokenizer.py  a byte-level BPE tokenizer of exactly a shape's vocabulary size
    hf_writer.py            the same weights as a Hugging Face Llama directory (for transformers)
    random_model.py         shape -> workspace (and an HF directory of the same weights), streamed
    workloads.py            random prompts, length spreads, ShareGPT-style files
    timing.py               per-request token arrival times, percentiles
    device.py               peak memory while a run goes on, the device's copy bandwidth
    meta.py                 what a result is about: model, weights' bytes per decode step, device, settings
    report.py               tables, JSON and CSV
    options.py, errors.py   comma lists, one-line argparse errors; BenchError
    generation.py           `refengine bench generation`: fixed batch, prompt and output lengths
    throughput.py           `refengine bench throughput`: N requests of spread lengths, bounded concurrency
"""
