"""Tiny random-weight models written once per session by refengine.bench.random_model (what
tools/make_random_workspace.py runs): float16 and int4 workspaces, each with its HF directory."""

from __future__ import annotations

import pytest

from refengine.bench.random_model import RandomModelOptions, make_random_model


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("random-models")
    made = {}
    for weight_type in ("float16", "int4"):
        ws, hf = root / f"ws-{weight_type}", root / f"hf-{weight_type}"
        make_random_model(RandomModelOptions("tiny", ws, weight_type, group_size=64, seed=3, hf_out=hf, threads=2))
        made[weight_type] = (ws, hf)
    return made
