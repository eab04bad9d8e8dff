"""ZeroGPU on a CPU: with a stand-in `spaces` package importable, app.py answers under `@spaces.GPU` with a duration
from the request's max_new_tokens and launches the Gradio way; without it nothing changes."""

import pytest

from spaces_stand_in import ask_app_under_stand_in
from trainer.serve import zerogpu


def test_without_spaces_the_function_is_unchanged():
    assert not zerogpu.available()  # `spaces` is not a dependency here

    def respond(message, history, max_new_tokens):
        yield message

    assert zerogpu.gpu(respond, max_new_tokens_arg=2) is respond


def test_duration_grows_with_max_new_tokens_and_is_capped():
    assert zerogpu.seconds_for(1) == zerogpu.BASE_SECONDS
    assert zerogpu.seconds_for(200) == zerogpu.BASE_SECONDS + 10 < zerogpu.seconds_for(1024)
    assert zerogpu.seconds_for(10**9) == zerogpu.MAX_SECONDS
    assert zerogpu.seconds_for("not a number") == zerogpu.seconds_for(256)


@pytest.mark.slow
def test_with_spaces_answers_run_under_spaces_gpu(tiny_llama, tmp_path):
    run = ask_app_under_stand_in(tiny_llama, tmp_path, max_new_tokens=40)
    assert isinstance(run.answer, str)
    assert run.calls == [{"function": "respond", "duration": zerogpu.seconds_for(40)}]
    # Launched by Gradio, not mounted beside the /v1 API: ZeroGPU lends its GPU to Gradio requests only.
    assert run.v1_status == 404
    assert "on ZeroGPU" in run.output
