"""Concurrent chats share one batched generate(): the same answers as one at a time, each reader's stop stops
only its own row, and a full queue refuses with BusyError instead of hanging."""

import threading

import pytest
import torch

from conftest import ask_together, run_together, start_server, wait_for
from trainer.serve.batching import BatchedChat
from trainer.serve.inference import BusyError, ChatModel, GenerationStats

GREEDY = dict(temperature=0.0, top_p=1.0, repetition_penalty=1.0)
QUESTIONS = ["Saya demam.", "Dokter, kepala saya pusing sejak kemarin pagi dan mual.", "Batuk?",
             "Anak saya ruam merah di lengan dan kaki setelah makan udang, apa yang harus saya lakukan?"]


@pytest.fixture(scope="module")
def chat(tiny_llama):
    return ChatModel.load(str(tiny_llama), "alpaca-id", dtype=torch.float32)


def test_a_batch_answers_as_one_at_a_time(chat):
    alone = []
    for q in QUESTIONS:
        alone.append(chat.answer(q, max_new_tokens=24, **GREEDY))
        alone_stats = chat.last
    batched = BatchedChat(chat, max_batch=8, start=False)
    answers, stats = ask_together(batched, QUESTIONS, max_new_tokens=24, **GREEDY)
    assert batched.batch_sizes == [4]  # one generate() for all four
    assert answers == alone
    assert all(s.new_tokens > 0 and s.prompt_tokens > 0 and s.finish in ("eos", "length", "marker") for s in stats)
    assert stats[-1].new_tokens == alone_stats.new_tokens and stats[-1].finish == alone_stats.finish
    batched.close()


def test_closing_one_stream_stops_only_its_row(chat):
    batched = BatchedChat(chat, max_batch=8, start=False)
    stats = [GenerationStats(), GenerationStats()]
    done = {}

    def reader(i, keep):
        texts = []
        for text in batched.stream(QUESTIONS[i], max_new_tokens=120, min_new_tokens=120, stats=stats[i], **GREEDY):
            texts.append(text)
            if len(texts) == keep:
                break  # the stop button: the generator is closed
        done[i] = texts

    run_together(batched, [threading.Thread(target=reader, args=(0, 3)), threading.Thread(target=reader, args=(1, 10**6))])
    assert batched.batch_sizes == [2]
    assert stats[0].finish == "stopped" and stats[0].new_tokens < 20
    assert stats[1].new_tokens == 120 and stats[1].finish in ("length", "marker")
    batched.close()


def test_a_full_queue_refuses_with_busy_and_a_stopped_wait_leaves_it(chat):
    batched = BatchedChat(chat, max_batch=1, max_waiting=1, start=False)
    first = batched.stream("Saya demam.", max_new_tokens=4)
    started = threading.Thread(target=lambda: next(first, None))
    started.start()
    wait_for(lambda: len(batched.waiting) == 1)
    with pytest.raises(BusyError) as refused:
        next(batched.stream("Saya batuk.", max_new_tokens=4))
    assert "busy" in str(refused.value) and refused.value.retry_after > 0
    batched.start()
    started.join(timeout=60)
    first.close()
    assert list(batched.stream("Saya batuk.", max_new_tokens=4, **GREEDY))  # served once there is room
    batched.close()


def test_settings_that_differ_go_to_different_batches(chat):
    batched = BatchedChat(chat, max_batch=8, start=False)
    out = {}

    def ask(name, **options):
        out[name] = list(batched.stream("Saya demam.", max_new_tokens=6, **options))

    run_together(batched, [threading.Thread(target=ask, args=("greedy",), kwargs=GREEDY),
                           threading.Thread(target=ask, args=("penalty",), kwargs=dict(GREEDY, repetition_penalty=1.3))], 60)
    assert sorted(batched.batch_sizes) == [1, 1] and set(out) == {"greedy", "penalty"}
    batched.close()


def test_the_app_serves_concurrent_clients_in_shared_batches(chat):
    """Eight openai clients at once against app.py's server with a BatchedChat: every answer is the greedy one
    alone, and they were answered in batches of more than one."""
    from openai import OpenAI

    import app

    expected = {q: chat.answer(q, max_new_tokens=12, **GREEDY) for q in QUESTIONS}
    batched = BatchedChat(chat, max_batch=8)
    url, server = start_server(app.build_app(batched))
    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    questions = QUESTIONS * 2
    answers = [None] * len(questions)

    def ask(i):
        reply = client.chat.completions.create(model=batched.name, messages=[{"role": "user", "content": questions[i]}],
                                               max_tokens=12, temperature=0)
        answers[i] = reply.choices[0].message.content

    try:
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(questions))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    finally:
        server.should_exit = True
        batched.close()
    assert answers == [expected[q] for q in questions]
    assert max(batched.batch_sizes) > 1  # shared forward passes (a paused batch resumes inside a later one)


def test_a_running_batch_pauses_for_newcomers_and_its_answer_is_unchanged(chat):
    long_q, late = QUESTIONS[1], [QUESTIONS[0], QUESTIONS[3]]
    expected = {q: chat.answer(q, max_new_tokens=40, **GREEDY) for q in [long_q, *late]}
    batched = BatchedChat(chat, max_batch=8)
    answers, started = {}, threading.Event()

    def ask(q):
        texts = []
        for text in batched.stream(q, max_new_tokens=40, **GREEDY):
            texts.append(text)
            if len(texts) == 3:
                started.set()
        answers[q] = texts[-1]

    first = threading.Thread(target=ask, args=(long_q,))
    first.start()
    assert started.wait(60)
    others = [threading.Thread(target=ask, args=(q,)) for q in late]
    for t in others:
        t.start()
    for t in [first, *others]:
        t.join(timeout=120)
    batched.close()
    # The first request ran alone, then was paused and resumed beside the two newcomers.
    assert batched.batch_sizes[0] == 1 and 3 in batched.batch_sizes, batched.batch_sizes
    assert answers == expected
