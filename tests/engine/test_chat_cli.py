"""`refengine chat` on one engine session (tiny model, character tokenizer): each turn sends only the new
message's tokens and the session holds the template of the whole conversation; `end` starts over;
a full session is reported; `chat turbomind MODEL` is accepted."""

import pytest
from click.testing import CliRunner

from refengine.cli.main import cli
from refengine.model.loader import LoadedModel
from refengine.pipeline import Pipeline
from tiny_engine import CharTokenizer, tiny_model

TOK = CharTokenizer()


@pytest.fixture
def pipes(monkeypatch):
    made = []
    model = tiny_model(seed=4)

    def from_model(cls, spec, backend="auto", chat_template=None, session_len=None, gen_config=None,
                   engine_config=None, tp=1):
        assert spec == "tiny"
        pipe = Pipeline(LoadedModel(model.cfg, model.weights, TOK, "tiny"), backend, None, gen_config, engine_config,
                        tp)
        made.append(pipe)
        return pipe

    monkeypatch.setattr(Pipeline, "from_model", classmethod(from_model))
    return made


def chat(args, text):
    return CliRunner().invoke(cli, ["chat", *args, "--temperature", "0", "--max-new-tokens", "5",
                                     "--cache-max-entry-count", "40", "--cache-block-seq-len", "4"], input=text)


def test_turns_send_only_new_tokens_and_the_session_holds_the_conversation(pipes, monkeypatch):
    from refengine.engine.engine import Engine
    held = {}
    real_end = Engine.end_session

    def end_session(self, sid):
        held[sid] = self.session_token_ids(sid)
        real_end(self, sid)

    monkeypatch.setattr(Engine, "end_session", end_session)
    sent = []
    real_stream = Engine.stream

    def stream(self, sid, messages, gen_config, sequence_start, sequence_end):
        turn = self._prepare(sid, messages, None, sequence_start, True)
        sent.append((turn.sequence_start, len(turn.input_ids)))
        return real_stream(self, sid, messages, gen_config, sequence_start, sequence_end)

    monkeypatch.setattr(Engine, "stream", stream)
    result = chat(["turbomind", "tiny"], "hi\nok?\nend\nagain\nexit\n")
    assert result.exit_code == 0, result.output
    assert "(new conversation)" in result.output
    first, second = [v for v in held.values() if v]
    replies = result.output.split(">>> ")
    # conversation 1: two turns; its tokens are the template of the whole conversation plus the last reply
    r1, r2 = replies[1].strip("\n"), replies[2].strip("\n")
    conversation = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": r1},
                    {"role": "user", "content": "ok?"}]
    assert TOK.decode(first) == TOK.render_chat(conversation) + r2
    assert TOK.decode(second).startswith("u:again\na:")
    # only the second turn's new tokens were sent: "\nu:ok?\na:" after the held "u:hi\na:" + reply
    assert sent == [(True, len("u:hi\na:")), (False, len("\nu:ok?\na:")), (True, len("u:again\na:"))]


def test_full_session_is_reported(pipes):
    result = CliRunner().invoke(cli, ["chat", "tiny", "--temperature", "0", "--max-new-tokens", "50",
                                       "--session-len", "16", "--cache-max-entry-count", "40",
                                       "--cache-block-seq-len", "4"], input="hi\nmore\nend\nexit\n")
    assert result.exit_code == 0, result.output
    assert "session_len = 16" in result.output            # the first reply ran into the limit
    assert "session length is 16" in result.output        # the second message does not fit


def test_two_arguments_need_an_engine_name(pipes):
    result = chat(["tiny", "tiny"], "exit\n")
    assert result.exit_code == 2 and "engine name" in result.output
