"""The page in a real browser: Debian's chromium driven by Playwright (never `playwright install`),
against the app serving its default model, alpaca-medis-270m, as `make demo` does."""

import json
import shutil
import sys
import time

import pytest
from test_app import serve

import app
from conftest import ROOT, start_server, wait_for
from trainer.eval_report import is_indonesian
from trainer.serve.feedback import FeedbackStore, Ratings
from trainer.serve.inference import ChatModel

sys.path.insert(0, str(ROOT / "tests" / "trainer" / "hub"))
from test_push import TOKEN, serve_hub  # noqa: E402  the Hub stand-in

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("chromium") is None and not shutil.which("/usr/bin/chromium"),
                       reason="chromium missing: `make test` installs it with apt"),
]
MAX_NEW_TOKENS = 64  # a few seconds of decoding on 2 CPU cores
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


@pytest.fixture(scope="module")
def feedback(tmp_path_factory):
    """The page's ratings: a file, pushed (when a test triggers it) to a dataset repo on the Hub stand-in."""
    import huggingface_hub.constants
    from huggingface_hub import HfApi

    with serve_hub() as hub, pytest.MonkeyPatch.context() as mp:
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # conftest.py's default, for the real Hub
        store = FeedbackStore(tmp_path_factory.mktemp("feedback") / "ratings.jsonl", "me/medis-feedback", 60,
                              api=HfApi(endpoint=hub.url, token=TOKEN))
        yield store, hub


@pytest.fixture(scope="module")
def browser():
    """One chromium for the module: Playwright's sync API runs one instance per thread."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def page(feedback, browser):
    chat = ChatModel.load(app.DEFAULTS["model"])
    url, server = serve(chat, {**app.DEFAULTS, "max_new_tokens": MAX_NEW_TOKENS}, Ratings(feedback[0], chat))
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.goto(url)
    page.wait_for_selector("textarea")
    yield page, chat
    page.close()
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


def test_a_rating_with_a_correction_is_stored_and_pushed(page, feedback, tmp_path):
    page, chat = page
    store, hub = feedback
    if not bot_messages(page):  # run alone; after the tests above, their last answer is rated
        ask(page, "Saya pilek dan bersin-bersin sejak kemarin, hidung tersumbat. Kenapa ya?")
        wait_for_answer(page, chat, 0)
    answer = bot_text(page)
    question = page.query_selector_all("[data-testid='user']")[-1].inner_text().strip()
    body = page.inner_text("body")
    assert "tanpa alamat IP, cookie atau sesi" in body and "Bukan pengganti dokter" in body
    page.get_by_label("Koreksi (opsional) · correction (optional)").fill("Kemungkinan rinitis alergi; hindari debu.")
    page.get_by_role("button", name="Dislike", exact=True).last.click()
    page.get_by_text("✓ Penilaian tersimpan · rating saved: 👎 + koreksi").wait_for(timeout=30_000)
    page.screenshot(path=str(tmp_path / "rated.png"), full_page=True)
    (record,) = [json.loads(line) for line in store.path.read_text(encoding="utf-8").splitlines()]
    assert record["rating"] == "dislike" and record["correction"] == "Kemungkinan rinitis alergi; hindari debu."
    assert record["messages"][-1] == {"role": "user", "content": question} and record["messages"][0]["role"] == "user"
    assert not any(m["content"].startswith("🚨") for m in record["messages"])  # the page's notices are not kept
    assert " ".join(record["answer"].split()) == " ".join(answer.split())
    assert record["model"] == "alpaca-medis-270m" and record["revision"].startswith("sha256:")
    assert record["settings"]["max_new_tokens"] == MAX_NEW_TOKENS
    assert page.get_by_label("Koreksi (opsional) · correction (optional)").input_value() == ""  # sent with it

    wait_for(lambda: store.scheduler is not None)
    store.scheduler.trigger().result()  # the push the scheduler makes every FEEDBACK_EVERY_MINUTES
    pushed = hub.files("me/medis-feedback", "dataset")[f"runs/{store.run}/ratings.jsonl"]
    assert json.loads(pushed)["id"] == record["id"]


@pytest.fixture(scope="module")
def login_page(tiny_llama, browser):
    """The page behind a login (`--auth dokter:...`), serving the tiny Llama: (a browser page, the url, the chat)."""
    from trainer.serve.access import Access, Logins

    chat = ChatModel.load(str(tiny_llama), template="alpaca-id")
    access = Access(logins=Logins([("dokter", "rahasia:panjang 42")]))
    url, server = start_server(app.build_app(chat, {**app.DEFAULTS, "max_new_tokens": 8}, access=access))
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    yield page, url, chat
    page.close()
    server.should_exit = True


def log_in(page, password: str) -> None:
    page.get_by_label("username").fill("dokter")
    page.get_by_label("password").fill(password)
    page.get_by_role("button", name="Login").click()


def test_the_page_behind_a_login_refuses_a_wrong_password_and_chats_after_the_right_one(login_page, tmp_path):
    page, url, chat = login_page
    page.goto(url)
    assert "bukan nasihat medis" in page.get_by_role("button", name="Login").locator("..").inner_text()
    log_in(page, "rahasia")
    page.get_by_text("Incorrect Credentials").wait_for(timeout=10_000)
    assert page.query_selector("textarea") is None and "Bukan pengganti dokter" not in page.inner_text("body")
    log_in(page, "rahasia:panjang 42")
    page.wait_for_selector("textarea", timeout=30_000)
    assert "Bukan pengganti dokter" in page.inner_text("body")  # the disclaimer above the answers
    ask(page, "Saya demam sejak kemarin, apa yang harus saya lakukan?")
    answer = wait_for_answer(page, chat, 0, timeout=60)
    page.screenshot(path=str(tmp_path / "logged-in.png"), full_page=True)
    assert answer and chat.last.new_tokens > 0 and len(bot_messages(page)) == 1
