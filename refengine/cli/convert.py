"""`refengine-convert MODEL` (also `refengine convert`): a model into a workspace, optionally 4-bit.

    refengine-convert demo --dst ./smollm2-awq --quant awq --group-size 64
    refengine-convert ./Llama-2-7b-chat-hf --dst ./llama2-ws --dtype bfloat16
    refengine-convert internlm2-chat-7b /path/to/model     LMDeploy's form: a chat template name first
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from refengine.cli.options import handle_user_errors, run_click
from refengine.errors import ChatTemplateError
from refengine.ops import BACKENDS

# LMDeploy model names (and families of them) -> our built-in chat templates
LMDEPLOY_PREFIXES = (("internlm2", "internlm2"), ("internlm", "internlm"), ("llama3", "llama3"),
                     ("llama-3", "llama3"), ("llama2", "llama2"), ("llama-2", "llama2"), ("qwen", "chatml"),
                     ("chatml", "chatml"))


def template_for_model_name(name: str) -> str:
    """A built-in template name for an LMDeploy model name (internlm-chat-7b, internlm2-chat-7b, llama2,
    llama3, qwen, ...); ChatTemplateError listing what is known otherwise."""
    from refengine.model.chat_templates import ALIASES, BUILTIN_SPECS, LMDEPLOY_NAMES
    key = name.lower()
    if key in BUILTIN_SPECS or key in ALIASES:
        return ALIASES.get(key, key)
    if key in LMDEPLOY_NAMES:
        return LMDEPLOY_NAMES[key]
    for prefix, template in LMDEPLOY_PREFIXES:
        if key.startswith(prefix):
            return template
    raise ChatTemplateError(f"unknown model name {name!r} before the model path (known: internlm-chat-7b, "
                            f"internlm2-chat-7b, llama2, llama3, qwen, or a built-in template name)")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model")
@click.argument("model_path", required=False)
@click.option("--dst", default="./workspace", show_default=True, help="Workspace directory to create.")
@click.option("--dtype", type=click.Choice(["float16", "bfloat16"]), default="float16", show_default=True,
              help="Storage of every weight that is not int4.")
@click.option("--chat-template", default=None, help="Built-in template name or a .jinja / .json file.")
@click.option("--force", is_flag=True, help="Replace an existing workspace at --dst.")
@click.option("--quant", type=click.Choice(["none", "rtn", "awq"]), default="none", show_default=True,
              help="4-bit weights: rtn (round to nearest) or awq (activation-aware, calibrated).")
@click.option("--w-bits", type=int, default=4, show_default=True, help="Weight bits (only 4).")
@click.option("--group-size", type=int, default=128, show_default=True, help="Input channels per scale: 32, 64, 128.")
@click.option("--calib-data", default="stdlib", show_default=True,
              help="stdlib (built in), a .txt / .jsonl file, or a hub dataset (pileval, wikitext2, org/name).")
@click.option("--calib-samples", type=click.IntRange(min=1), default=128, show_default=True,
              help="Calibration sequences; time grows with it (128 converts the default model in ~5 min "
                   "on 2 CPU cores, a 1B model in ~20 s on an H100).")
@click.option("--calib-seqlen", type=click.IntRange(min=2), default=512, show_default=True,
              help="Tokens per calibration sequence.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="Calibration sequences per forward pass (memory vs speed).")
@click.option("--search-scale/--no-search-scale", default=True, show_default=True,
              help="AWQ's grid search of the scale ratio; without it the ratio is 0.5 (LMDeploy's fast smoothing).")
@click.option("--clip/--no-clip", default=True, show_default=True, help="AWQ's weight clipping search.")
@click.option("--calib-inputs", type=click.Choice(["float", "quantized"]), default="float", show_default=True,
              help="What each block calibrates on: the float model's activations (AutoAWQ, LMDeploy), or the "
                   "outputs of the blocks already quantized (one more forward pass per block).")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True)
@handle_user_errors
def convert(model, model_path, chat_template, **kwargs):
    """Convert MODEL (demo, a GGUF file, a Hugging Face directory or hub id, an AutoAWQ checkpoint or a
    workspace) into a workspace at --dst. LMDeploy's form `refengine-convert NAME MODEL_PATH` names the
    chat template first (internlm-chat-7b, internlm2-chat-7b, llama2, llama3, qwen)."""
    from refengine.quant.progress import TextProgress
    from refengine.workspace.convert import ConvertOptions
    from refengine.workspace.convert import convert as run_convert
    if model_path is not None:
        if chat_template is not None:
            raise ChatTemplateError("give the chat template either before the model path or with "
                                    "--chat-template, not both")
        chat_template, model = template_for_model_name(model), model_path
    opts = ConvertOptions(dst=Path(kwargs.pop("dst")), chat_template=chat_template, **kwargs)
    summary = run_convert(model, opts, TextProgress())
    click.echo(format_summary(summary))


def format_summary(s) -> str:
    method = (s.quant or {}).get("method", "")
    kind = f"int4 ({method}, group size {s.group_size})" if s.weight_type == "int4" else s.weight_type
    return (f"workspace {s.dst} written in {s.seconds:.1f} s\n"
            f"  weights: {kind}: {s.linear_bits_per_weight:.2f} bits per linear weight, "
            f"{s.bits_per_weight:.2f} bits per weight overall (embeddings included)\n"
            f"  size on disk: {s.bytes_on_disk / 2**20:.1f} MiB")


def main(argv: list[str] | None = None) -> None:
    sys.exit(run_click(convert, argv, prog_name="refengine-convert"))


if __name__ == "__main__":
    main()
