"""The page in a real browser: Debian's chromium driven by Playwright (never `playwright install`),
against the app serving its default model, alpaca-medis-270m, as `make demo` does."""

import shutil
import time

import pytest
from test_app import serve

import app
from trainer.eval_report import is_indonesian
from trainer.serve.inference import ChatModel

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("chromium") is None and not shutil.which("/usr/bin/chromium"),
                       reason="chromium missing: `make test` installs it with apt"),
]
MAX_NEW_TOKENS = 64  # a few seconds of decoding on 2 CPU cores
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


@pytest.fixture(scope="module")
def page():
    from playwright.sync_api import sync_playwright

    chat = ChatModel.load(app.DEFAULTS["model"])
    url, server = serve(chat, {**app.DEFAULTS, "max_new_tokens": MAX_NEW_TOKENS})
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(url)
        page.wait_for_selector("textarea")
        yield page, chat
        browser.close()
    server.should_exit = True


def bot_messages(page) -> list[str]:
    return [m.inner_text().strip() for m in page.query_selector_all("[data-testid='bot']")]


def bot_text(page) -> str:
    messages = bot_messages(page)
    return messages[-1] if messages else ""


def ask(page, question: str) -> None:
    page.fill("textarea", question)
    page.keyboard.press("Enter")


def test_indonesian_question_streams_an_answer(page, tmp_path):
    page, chat = page
    body = page.inner_text("body")
    assert "Bukan pengganti dokter" in body and "alpaca-medis-270m" in body and "Gemma Terms of Use" in body
    ask(page, "Dokter, apa saja gejala demam berdarah dan kapan saya harus ke rumah sakit?")
    seen = []
    deadline = time.time() + 120
    while time.time() < deadline:
        text = bot_text(page)
        if text and (not seen or text != seen[-1]):
            seen.append(text)
        if seen and page.query_selector(".stop-button") is None and chat.last.finish:
            break
        time.sleep(0.1)
    page.screenshot(path=str(tmp_path / "answer.png"), full_page=True)
    assert (tmp_path / "answer.png").stat().st_size > 10_000
    assert len(seen) >= 3, seen  # the answer grew on screen: streamed
    assert all(later.startswith(earlier[:10]) for earlier, later in zip(seen, seen[1:]))
    assert len(seen[-1].split()) >= 5 and chat.last.finish in ("eos", "length", "marker")
    assert is_indonesian(seen[-1]), seen[-1]


def test_stop_button_stops_generation(page, tmp_path):
    page, chat = page
    answers_before = len(bot_messages(page))
    ask(page, "Jelaskan secara rinci semua penyebab, gejala, pemeriksaan, dan pengobatan diabetes.")
    deadline = time.time() + 60
    while len(bot_messages(page)) <= answers_before or len(bot_text(page).split()) < 2:
        assert time.time() < deadline, "no answer started"
        time.sleep(0.1)
    page.click(".stop-button")
    deadline = time.time() + 30
    while chat.last.finish != "stopped":
        assert time.time() < deadline, f"generation did not stop: {chat.last}"
        time.sleep(0.1)
    assert chat.last.new_tokens < MAX_NEW_TOKENS
    page.screenshot(path=str(tmp_path / "stopped.png"), full_page=True)


def wait_for_answer(page, chat, answers_before: int, timeout: float = 120) -> str:
    deadline = time.time() + timeout
    while True:
        assert time.time() < deadline, "no finished answer"
        if len(bot_messages(page)) > answers_before and page.query_selector(".stop-button") is None and chat.last.finish:
            return bot_text(page)
        time.sleep(0.2)


def test_red_flag_message_shows_the_emergency_notice_above_the_answer(page, tmp_path):
    page, chat = page
    before = len(bot_messages(page))
    ask(page, "Dokter, ayah saya tiba-tiba bicaranya pelo dan wajahnya mencong ke kiri, apa yang harus kami lakukan?")
    deadline = time.time() + 30
    while "Tanda bahaya" not in bot_text(page) or len(bot_messages(page)) <= before:
        assert time.time() < deadline, "no notice shown"
        time.sleep(0.1)
    text = wait_for_answer(page, chat, before)
    page.screenshot(path=str(tmp_path / "notice.png"), full_page=True)
    assert text.startswith("🚨 Tanda bahaya: tanda stroke"), text[:200]  # above the model's words
    assert "IGD" in text and "119" in text and "112" in text
    assert len(text.split("sekarang; jangan menunggu jawaban di bawah ini.", 1)[1].split()) >= 3  # the answer follows
    assert "Bukan pengganti dokter" in page.inner_text("body")
    before = len(bot_messages(page))
    ask(page, "Saya pilek dan bersin-bersin sejak kemarin, hidung tersumbat. Kenapa ya?")
    assert "Tanda bahaya" not in wait_for_answer(page, chat, before)
