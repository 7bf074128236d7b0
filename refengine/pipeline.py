"""The Python API: `refengine.pipeline(model)` → generate / stream, in the spirit of LMDeploy's pipeline.

    pipe = refengine.pipeline("demo")
    pipe("What is the capital of France?").text                     # a str is one user message
    pipe([{"role": "user", "content": "Hi"}], max_new_tokens=32)      # chat messages
    pipe.generate("Once upon a time", do_preprocess=False)            # raw text, no chat template
    pipe(["Hi", "Tell me a joke"])                                    # a batch: run concurrently
    for chunk in pipe.stream("Tell me a story"): print(chunk.text, end="")

Every request runs on the continuous-batching engine (refengine.engine.engine.Engine): a batch of prompts
is submitted at once and generated together. Engine settings (LMDeploy's names) come in an EngineConfig:

    refengine.pipeline("demo", engine_config=EngineConfig(max_batch_size=32, enable_prefix_caching=True))

`tp=N` splits the model over N GPUs (N CPU processes with backend="numpy"; docs/tensor_parallel.md). The
ranks are processes: close the pipeline (or use it in a `with`) to stop them, and guard a script that
starts them with `if __name__ == "__main__":`.

    with refengine.pipeline("./ws", tp=2) as pipe:
        print(pipe("Hi").text)
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterator, Sequence, Union

from refengine.config import EngineConfig
from refengine.engine.engine import Engine
from refengine.engine.request import EngineOutput
from refengine.engine.sampler import TokenChoice
from refengine.errors import GenerationConfigError
from refengine.model.loader import LoadedModel, load_model
from refengine.parallel.build import build_model
from refengine.sampling_params import GenerationConfig

Messages = list[dict]
Prompt = Union[str, Messages, Sequence[int]]


@dataclass
class Response:
    """A finished generation (or, from `stream`, one increment of it)."""
    text: str
    token_ids: list[int]
    finish_reason: str | None
    input_token_len: int
    generate_token_len: int
    logprobs: list[TokenChoice] = field(default_factory=list)


class Pipeline:
    def __init__(self, loaded: LoadedModel, backend: str = "auto", session_len: int | None = None,
                 gen_config: GenerationConfig | None = None, engine_config: EngineConfig | None = None,
                 tp: int = 1):
        self.loaded = loaded
        self.tokenizer = loaded.tokenizer
        self.model = build_model(loaded, backend, tp)       # checks tp before any rank process starts
        config = engine_config or EngineConfig()
        if session_len is not None:
            config = replace(config, session_len=session_len)
        try:
            self.engine = Engine(self.model, self.tokenizer, config)
        except BaseException:
            self._close_model()                 # e.g. a session_len the cache cannot hold: stop the ranks now
            raise
        self.session_len = self.engine.session_len
        self.gen_config = gen_config or GenerationConfig()

    @classmethod
    def from_model(cls, model: str, backend: str = "auto", chat_template: str | None = None,
                   session_len: int | None = None, gen_config: GenerationConfig | None = None,
                   engine_config: EngineConfig | None = None, tp: int = 1) -> "Pipeline":
        return cls(load_model(model, chat_template=chat_template), backend, session_len, gen_config, engine_config,
                   tp)

    def encode_prompt(self, prompt: Prompt, do_preprocess: bool = True) -> list[int]:
        """Token ids for a prompt: a str (a user message, or raw text with do_preprocess=False),
        a list of chat messages, or token ids as they are."""
        if isinstance(prompt, str):
            if not do_preprocess:
                return self.tokenizer.encode(prompt)
            prompt = [{"role": "user", "content": prompt}]
        if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(m, dict) for m in prompt):
            return self.tokenizer.encode_chat(list(prompt))
        if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(t, int) for t in prompt):
            bad = [t for t in prompt if not 0 <= t < self.loaded.config.vocab_size]
            if bad:
                raise GenerationConfigError("prompt", f"token id {bad[0]} is outside the vocabulary")
            return list(prompt)
        raise GenerationConfigError("prompt", "must be a non-empty str, list of messages or list of token ids")

    def _config(self, gen_config: GenerationConfig | None, overrides: dict) -> GenerationConfig:
        cfg = gen_config or self.gen_config
        return cfg.updated(**overrides) if overrides else cfg

    def _start(self, prompt: Prompt, cfg: GenerationConfig, do_preprocess: bool, session_id=None
               ) -> Iterator[EngineOutput]:
        """Queue the request now (not at the first next()): a batch's requests all run together."""
        return self.engine.stream(session_id, input_ids=self.encode_prompt(prompt, do_preprocess), gen_config=cfg)

    def stream(self, prompt: Prompt, gen_config: GenerationConfig | None = None, do_preprocess: bool = True,
               **overrides) -> Iterator[Response]:
        """Yield increments (new text and token ids) as they are generated."""
        outputs = self._start(prompt, self._config(gen_config, overrides), do_preprocess)
        for out in outputs:
            yield _response(out)

    def generate(self, prompts: Prompt | list[Prompt], gen_config: GenerationConfig | None = None,
                 do_preprocess: bool = True, **overrides) -> Response | list[Response]:
        """Generate to completion; a list of prompts gives a list of responses (generated together)."""
        cfg = self._config(gen_config, overrides)
        batch = _is_batch(prompts)
        ids = [self.engine.new_session_id() for _ in (prompts if batch else [prompts])]
        try:
            streams = [self._start(p, cfg, do_preprocess, sid) for p, sid in zip(prompts if batch else [prompts], ids)]
            responses = [_collect(s) for s in streams]
        except BaseException:
            for sid in ids:             # a bad prompt (or Ctrl-C): stop the rest of the batch too
                self.engine.cancel(sid)
            raise
        return responses if batch else responses[0]

    __call__ = generate
    stream_infer = stream

    def close(self) -> None:
        """Stop the engine's thread, then the model's rank processes (tp > 1)."""
        self.engine.close()
        self._close_model()

    def _close_model(self) -> None:
        close = getattr(self.model, "close", None)      # a LlamaModel holds no processes; a split model does
        if close is not None:
            close()

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _response(out: EngineOutput) -> Response:
    return Response(out.text, list(out.token_ids), out.finish_reason, out.usage.prompt_tokens,
                    out.usage.completion_tokens, list(out.logprobs))


def _collect(outputs: Iterator[EngineOutput]) -> Response:
    steps = [_response(o) for o in outputs]
    last = steps[-1]
    return Response("".join(s.text for s in steps), [t for s in steps for t in s.token_ids],
                    last.finish_reason, last.input_token_len, last.generate_token_len,
                    [lp for s in steps for lp in s.logprobs])


def _is_batch(prompts) -> bool:
    """A list of prompts (strs, message lists, id lists) rather than one prompt."""
    return isinstance(prompts, (list, tuple)) and bool(prompts) and all(
        isinstance(p, str) or (isinstance(p, (list, tuple)) and p and isinstance(p[0], (dict, int)))
        for p in prompts)
