"""Differential testing: refengine against transformers, or against a dump from any other implementation.

    from refengine.diff import compare
    report = compare("demo", ["What is the capital of France?"])            # against transformers
    report = compare("path/to/model", prompts, against="theirs.npz")        # against a DUMP.npz
    report.ok, report.prompts[0].first_bad, report.to_dict()

Both sides see the same token ids (refengine tokenizes) and the same weights (rounded to `dtype` on both
sides). The transformers side is a child process writing a DUMP.npz (theirs.py), so both `against` forms
go through one comparison. Files: prompts.py (what runs), ours.py / theirs.py (the two sides),
dump_format.py (the exchange format), metrics.py (the numbers), tolerances.py (the bounds), report.py,
render.py (the table).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable, Sequence

from refengine.diff import theirs
from refengine.diff.dump_format import Dump, check_against, read_dump
from refengine.diff.errors import DiffError, DumpError, PromptsFileError, ReferenceUnavailableError
from refengine.diff.metrics import greedy_diff, layer_diffs, logits_diff
from refengine.diff.prompts import Prompt, encode_prompts, label, read_prompts
from refengine.diff.report import DiffReport, GreedyDiff, LayerDiff, LogitsDiff, PromptReport
from refengine.diff.theirs import SCRIPT as DUMP_SCRIPT
from refengine.diff.tolerances import DTYPES, TABLE, Tolerance, resolve_tolerance


def compare(model, prompts: Sequence[Prompt], against: str = "transformers", dtype: str = "float32",
            max_new_tokens: int = 16, *, chat: bool = True, atol: float | None = None,
            rtol: float | None = None, backend: str = "numpy", chat_template: str | None = None,
            progress: Callable[[str], None] | None = None) -> DiffReport:
    """Run `prompts` through refengine and the reference; report layer by layer where they part.

    model: a model spec (`demo`, a GGUF file, an HF directory or hub id; loaded with `chat_template`)
    or a LoadedModel.
    prompts: strings (user messages, or raw text with chat=False) and/or lists of chat messages.
    against: "transformers", or the path of a DUMP.npz (docs/diff.md).
    dtype: float32 | float16 | bfloat16, the precision the weights are rounded to on both sides and the
    reference computes in (refengine computes in float32). atol/rtol replace the table's tolerance."""
    from refengine.model.loader import LoadedModel, load_model
    say = progress or (lambda message: None)
    tol = resolve_tolerance(dtype, atol, rtol)
    if against == "transformers":
        theirs.check_available()
    elif not Path(against).is_file():
        raise DumpError(f"--against {against}: neither 'transformers' nor an existing DUMP.npz file")
    if not isinstance(model, LoadedModel):
        say(f"loading {model} ...")
        model = load_model(model, chat_template=chat_template)
    prompt_ids = encode_prompts(model.tokenizer, prompts, chat)
    with tempfile.TemporaryDirectory(prefix="refengine-diff-") as tmp:
        ours, ref = _run_both(model, prompt_ids, against, dtype, max_new_tokens, backend, Path(tmp), say)
    decode = lambda ids: model.tokenizer.decode(ids, skip_special_tokens=False)
    reports = [PromptReport(label(p), len(ids), layer_diffs(o, r, tol), logits_diff(o.logits, r.logits, tol),
                            greedy_diff(o, r, tol, decode))
               for p, ids, o, r in zip(prompts, prompt_ids, ours, ref.prompts)]
    return DiffReport(model.source, against, ref.producer or "unknown producer", dtype, tol, reports)


def _run_both(model, prompt_ids, against, dtype, max_new_tokens, backend, tmp: Path, say):
    """(our PromptDumps, the reference Dump). The transformers child runs while refengine computes."""
    if against == "transformers":
        say("starting transformers in a child process ...")
        run = theirs.TransformersRun(theirs.model_location(model.source), prompt_ids, dtype, max_new_tokens, tmp)
        try:
            ours = _run_ours(model, prompt_ids, [max_new_tokens] * len(prompt_ids), dtype, backend, say)
            say("waiting for transformers ...")
            ref = read_dump(run.wait())
        finally:
            run.kill()
    else:
        ref = read_dump(against)
        check_against(ref, prompt_ids, model.config)        # before the (possibly long) forward passes
        lengths = [0 if p.greedy_ids is None else min(max_new_tokens, len(p.greedy_ids)) for p in ref.prompts]
        ours = _run_ours(model, prompt_ids, lengths, dtype, backend, say)
    check_against(ref, prompt_ids, model.config)
    return ours, ref


def _run_ours(model, prompt_ids, new_tokens, dtype, backend, say):
    from refengine.diff.ours import run_prompt
    from refengine.diff.precision import round_weights
    from refengine.model.llama import LlamaModel
    from refengine.ops import get_backend
    llama = LlamaModel(model.config, round_weights(model.weights, dtype), get_backend(backend))
    out = []
    for i, (ids, n) in enumerate(zip(prompt_ids, new_tokens)):
        say(f"refengine: prompt {i + 1}/{len(prompt_ids)} ({len(ids)} tokens + {n} greedy)")
        out.append(run_prompt(llama, ids, n))
    return out


__all__ = ["compare", "read_prompts", "encode_prompts", "DiffReport", "PromptReport", "LayerDiff", "LogitsDiff",
           "GreedyDiff", "Tolerance", "TABLE", "DTYPES", "resolve_tolerance", "Dump", "read_dump", "DiffError",
           "DumpError", "PromptsFileError", "ReferenceUnavailableError", "DUMP_SCRIPT"]
