"""The desktop chat example (examples/desktop/chat.py) driven like a user would: the real window
under Qt's offscreen platform (or the display in $QT_QPA_PLATFORM), the real SmolLM2, keys and
clicks through QTest. Skips when PySide6 is not installed (`pip install ".[desktop]"`; CI installs
only the test extra).

Time bounds here are hang guards (generous, the machine may be shared); the measured times are
printed (pytest -s). LOWBIT_DESKTOP_SCREENSHOT=examples/desktop/screenshot.png refreshes the
README's screenshot."""
from __future__ import annotations

import importlib.util
import os
import time

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
QtWidgets = pytest.importorskip("PySide6.QtWidgets", reason="PySide6 not installed (lowbit[desktop])")
from PySide6.QtCore import Qt, QTimer  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402

from _models import real_model_or_skip  # noqa: E402

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "examples", "desktop", "chat.py")
STOP_BOUND_S = 5.0        # Stop -> window ready again (hang guard; measured well under a second)
FREEZE_BOUND_S = 2.0      # the longest the GUI thread may go without running its event loop
LONG_PROMPT_TOKENS = 2000


def load_example():
    spec = importlib.util.spec_from_file_location("lowbit_desktop_chat", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if module.pyside_drops_references():     # it would abort the whole pytest process later
        pytest.skip("this PySide6 build over-releases None/True on this Python (6.12.0 on < 3.12); "
                    "pip install 'PySide6-Essentials<6.12'")
    return module


class FreezeMeter:
    """A 10 ms timer in the GUI thread; the longest gap between its ticks is how long the event
    loop was blocked (a slot doing model work on the GUI thread would show up here)."""

    def __init__(self):
        self.ticks = [time.perf_counter()]
        self.timer = QTimer(interval=10, timeout=lambda: self.ticks.append(time.perf_counter()))
        self.timer.start()

    def longest_gap(self) -> float:
        self.timer.stop()
        return max(b - a for a, b in zip(self.ticks, self.ticks[1:]))


def wait_until(condition, timeout: float, what: str) -> float:
    """Run the GUI event loop until ``condition()``; the seconds it took."""
    t0 = time.perf_counter()
    while not condition():
        if time.perf_counter() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        QTest.qWait(10)
    return time.perf_counter() - t0


@pytest.fixture(scope="module")
def window():
    path = real_model_or_skip("smollm2-135m-instruct")
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    chat = load_example()
    win = chat.ChatWindow()
    win.show()
    win.load_model(path)
    assert win.busy == "load" and win.stop_button.isEnabled() and not win.send_button.isEnabled()
    wait_until(lambda: not win.busy, 120, "the model to load")
    assert win.model_name == "smollm2-135m-instruct", win.status_label.text()
    assert "loaded" in win.status_label.text() and "KV" in win.status_label.text()
    yield win
    win.close()
    assert win.worker_thread.isFinished()
    app.processEvents()


def send(win, prompt: str, max_new_tokens: int, type_it: bool = True, ctrl_enter: bool = False) -> None:
    win.max_new_tokens = max_new_tokens
    if type_it:
        win.prompt_edit.setFocus()
        QTest.keyClicks(win.prompt_edit, prompt)
    else:
        win.prompt_edit.setPlainText(prompt)
    if ctrl_enter:
        QTest.keyClick(win.prompt_edit, Qt.Key_Return, Qt.ControlModifier)
    else:
        QTest.mouseClick(win.send_button, Qt.LeftButton)
    assert win.busy == "reply" and not win.send_button.isEnabled() and win.stop_button.isEnabled()
    assert win.prompt_edit.toPlainText() == ""


def test_streamed_reply_and_screenshot(window, tmp_path):
    meter = FreezeMeter()
    send(window, "Give me three short tips for writing clear Python code.", max_new_tokens=300)
    lengths = []
    while window.busy:
        lengths.append(len(window.reply_text))
        QTest.qWait(20)
    gap = meter.longest_gap()
    result = window.last_result
    assert result["finish_reason"] in ("eos", "length"), window.status_label.text()
    assert window.reply_text.strip() and result["text"] == window.reply_text
    growth = sorted(set(n for n in lengths if 0 < n < len(window.reply_text)))
    assert len(growth) >= 2, f"the reply did not stream: lengths seen {sorted(set(lengths))}"
    assert "tok/s" in window.status_label.text() and "MiB" in window.status_label.text()
    assert window.messages[-1] == {"role": "assistant", "content": window.reply_text}
    marker = {"eos": "", "length": "  [max tokens]"}[result["finish_reason"]]
    assert window.transcript.toPlainText().endswith(window.reply_text + marker)
    assert gap < FREEZE_BOUND_S, f"the GUI thread was blocked for {gap:.2f} s"
    print(f"\nstreamed reply: {result['generated_tokens']} tokens, {len(growth)} partial lengths seen, "
          f"{result['decode_tok_s']:.1f} tok/s; longest GUI gap {gap * 1000:.0f} ms")

    image = window.grab()
    assert image.save(str(tmp_path / "screenshot.png"))
    assert image.width() >= 600 and image.height() >= 400
    target = os.environ.get("LOWBIT_DESKTOP_SCREENSHOT")
    if target:
        assert image.save(target)


def test_stop_mid_reply_stops_at_once(window):
    meter = FreezeMeter()
    send(window, "Write a long story about a lighthouse keeper and a storm.", max_new_tokens=2000,
         ctrl_enter=True)
    wait_until(lambda: len(window.reply_text) >= 40 or not window.busy, 120, "streamed text")
    assert window.busy, f"the reply ended before Stop: {window.last_result['finish_reason']}"
    QTest.mouseClick(window.stop_button, Qt.LeftButton)
    stop_s = wait_until(lambda: not window.busy, STOP_BOUND_S, "the reply to stop")
    stopped_at = len(window.reply_text)
    QTest.qWait(500)                                  # nothing more arrives after the stop
    gap = meter.longest_gap()
    assert len(window.reply_text) == stopped_at
    assert window.last_result["finish_reason"] == "cancelled"
    assert window.last_result["generated_tokens"] < 2000
    assert window.send_button.isEnabled() and not window.stop_button.isEnabled()
    assert "[stopped]" in window.transcript.toPlainText()
    assert gap < FREEZE_BOUND_S, f"the GUI thread was blocked for {gap:.2f} s"
    print(f"\nstop mid-reply: ready again {stop_s * 1000:.0f} ms after Stop "
          f"({window.last_result['generated_tokens']} tokens); longest GUI gap {gap * 1000:.0f} ms")


def test_stop_during_long_prompt_and_reply_again(window):
    sentence = "The lighthouse keeper wrote down the weather, the ships and the birds every day. "
    prompt = sentence * (LONG_PROMPT_TOKENS // 15)
    n_prompt = len(window.worker.model.chat_ids(window.messages + [{"role": "user", "content": prompt}]))
    assert n_prompt >= LONG_PROMPT_TOKENS
    turns = list(window.messages)
    meter = FreezeMeter()
    send(window, prompt, max_new_tokens=32, type_it=False)
    wait_until(lambda: window.status_label.text().startswith("Reading the prompt"), 60, "prefill to start")
    QTest.qWait(50)
    QTest.mouseClick(window.stop_button, Qt.LeftButton)
    stop_s = wait_until(lambda: not window.busy, STOP_BOUND_S, "the prefill to stop")
    gap = meter.longest_gap()
    result = window.last_result
    assert result["finish_reason"] == "cancelled"
    # a prefill that ran to its end records its time: zero means Stop interrupted it
    assert result["prefill_seconds"] == 0.0 and result["generated_tokens"] == 0
    assert window.reply_text == "" and window.messages == turns   # the unanswered prompt is dropped
    assert gap < FREEZE_BOUND_S, f"the GUI thread was blocked for {gap:.2f} s"
    print(f"\nstop during a {n_prompt}-token prompt: ready again {stop_s * 1000:.0f} ms after Stop; "
          f"longest GUI gap {gap * 1000:.0f} ms")

    send(window, "Say hello.", max_new_tokens=8)      # the model is usable after the interrupted prefill
    wait_until(lambda: not window.busy, 120, "a reply after the stop")
    assert window.last_result["finish_reason"] in ("eos", "length") and window.reply_text


def test_failed_and_stopped_loads_are_reported_and_recover(window, tmp_path):
    path = real_model_or_skip("smollm2-135m-instruct")
    window.load_model(path)
    QTest.mouseClick(window.stop_button, Qt.LeftButton)   # the progress callback aborts the load
    wait_until(lambda: not window.busy, 60, "the stopped load")
    assert window.status_label.text() == "Loading smollm2-135m-instruct stopped."
    assert not window.send_button.isEnabled() and window.load_button.isEnabled()

    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 60)
    window.load_model(str(bad))
    wait_until(lambda: not window.busy, 60, "the failed load")
    assert window.status_label.text().startswith(f"could not load {bad}")
    assert not window.send_button.isEnabled() and window.load_button.isEnabled()
    window.load_model(path)
    wait_until(lambda: not window.busy, 120, "the model to load again")
    assert window.send_button.isEnabled() and window.messages == []
