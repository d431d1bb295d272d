"""A desktop chat window on lowbit's Python API (Qt for Python, PySide6).

    pip install ".[desktop]"
    python examples/desktop/chat.py [MODEL]     # a registry name or a .gguf path

Threading rule: the model lives in one worker thread (``Worker``, moved to a QThread). The GUI
thread never waits for the model: it sends requests to the worker as queued signals, and the
worker sends back load progress, reply pieces and the final statistics as signals, which Qt
queues into the GUI thread's event loop. So the window repaints and takes clicks while the model
loads or computes. The one model call the GUI thread makes while the worker runs is
``Model.cancel()``: it is safe from any thread and returns at once; the running step stops within
one layer, also while the prompt is being read (prefill), and the stream ends with finish_reason
"cancelled". (Closing the window stops the worker thread first, then closes the Model.)

One Model runs one generation at a time; the worker takes requests in order, so nothing here
needs a lock. (For several conversations at once, use one Model per worker.)
"""
from __future__ import annotations

import os
import sys
import threading
import time
from typing import List, Optional

from PySide6.QtCore import QObject, QThread, QTimer, Signal, Slot
from PySide6.QtGui import QColor, QFont, QKeySequence, QShortcut, QTextCharFormat, QTextCursor
from PySide6.QtWidgets import (QApplication, QComboBox, QFileDialog, QHBoxLayout, QLabel,
                               QMainWindow, QPlainTextEdit, QProgressBar, QPushButton,
                               QTextBrowser, QVBoxLayout, QWidget)

import lowbit
from lowbit.runtime.progress import human_bytes

MiB = 1 << 20
# Model.cancel() applies to the generation that holds the model; a Stop pressed while the worker
# is still rendering the prompt would be cleared when the generation starts, so the GUI repeats
# cancel() at this interval until the worker reports the reply ended.
CANCEL_REPEAT_MS = 50
DEFAULT_MODEL = "smollm2-135m-instruct"         # lowbit's default (an instruct model, 94 MiB)
USER_COLOR, MODEL_COLOR = "#1f6feb", "#8250df"


def pyside_drops_references() -> bool:
    """True for a PySide6 build that releases None once too often on every call returning None
    (PySide6 6.12.0 on Python 3.10 / 3.11, where None is not immortal; its Signal.emit does the
    same to True): a session would abort after some thousand calls with "deallocating None"."""
    probe = QObject()
    before = sys.getrefcount(None)
    for _ in range(20):
        probe.setObjectName("probe")
    return sys.getrefcount(None) < before - 10


class Worker(QObject):
    """Owns the Model; its slots run in the worker thread, one request at a time."""
    progress = Signal(float)            # load fraction, 0..1
    loaded = Signal(str, object)        # file name, Model.memory()
    prefilling = Signal()               # the prompt is rendered; reading it starts now
    piece = Signal(str, int, float)     # text, tokens so far, decode tok/s so far
    replied = Signal(object)            # Generation.to_dict() + {"memory": Model.memory()}
    failed = Signal(str)                # one line for the status bar

    def __init__(self):
        super().__init__()
        self.model: Optional[lowbit.Model] = None
        self._stop = threading.Event()

    def arm(self) -> None:
        """Called by the GUI before each request (none is running then)."""
        self._stop.clear()

    def request_stop(self) -> None:
        """From any thread: abort a load, or cancel the running reply within one layer."""
        self._stop.set()
        model = self.model
        if model is not None:
            model.cancel()

    @Slot(str)
    def load(self, source: str) -> None:
        try:
            if self.model is not None:
                self.model.close()
                self.model = None
            model = lowbit.load(source, progress=self._on_progress)
            memory = model.memory()
        except lowbit.Cancelled:
            self.failed.emit(f"Loading {source} stopped.")
            return
        except Exception as e:  # noqa: BLE001 - any failure goes to the status bar, not a dead thread
            self.failed.emit(f"could not load {source}: {e}")
            return
        self.model = model
        self.loaded.emit(os.path.basename(model.path), memory)

    def _on_progress(self, fraction: float) -> bool:
        """Called by lowbit.load in this thread; returning False aborts the load."""
        self.progress.emit(fraction)
        return not self._stop.is_set()

    @Slot(object, object)
    def reply(self, messages: List[dict], options: dict) -> None:
        try:
            stream = self.model.chat(messages, stream=True, **options)
            with stream:                               # closed (cancelled) however the loop ends
                if not self._stop.is_set():
                    self.prefilling.emit()
                    first = None
                    for text in stream:
                        now = time.perf_counter()
                        first = first or now           # the first piece comes right after prefill
                        n = stream.result.generated_tokens
                        self.piece.emit(text, n, (n - 1) / (now - first) if now > first else 0.0)
                        if self._stop.is_set():
                            break
            result = stream.result.to_dict()
            result["memory"] = self.model.memory()
        except Exception as e:  # noqa: BLE001 - e.g. a prompt longer than the context
            self.failed.emit(str(e))
            return
        self.replied.emit(result)


class ChatWindow(QMainWindow):
    request_load = Signal(str)
    request_reply = Signal(object, object)

    def __init__(self, model: Optional[str] = None):
        super().__init__()
        self.setWindowTitle("lowbit chat")
        self.resize(760, 560)
        self.messages: List[dict] = []                 # the conversation sent to Model.chat
        self.reply_text = ""                           # the reply being streamed
        self.last_result: Optional[dict] = None        # the last reply's Generation record
        self.max_new_tokens = 512
        self.model_name = ""
        self.busy = ""                                 # "", "load" or "reply"
        self._build_widgets()
        self._start_worker()
        self._set_busy("")
        if model:
            self.load_model(model)

    # ---- layout ------------------------------------------------------------------------------
    def _build_widgets(self) -> None:
        self.model_box = QComboBox()
        self.names_by_path = {}                        # cached registry files -> their names
        for entry in lowbit.registry.list_models():
            note = "cached" if entry["cached"] else f"download {human_bytes(entry['size'])}"
            self.model_box.addItem(f"{entry['name']}  ({note})", entry["name"])
            if entry["path"]:
                self.names_by_path[os.path.realpath(entry["path"])] = entry["name"]
        self.model_box.setCurrentIndex(max(self.model_box.findData(DEFAULT_MODEL), 0))
        self.open_button = QPushButton("Open .gguf…")
        self.load_button = QPushButton("Load")
        text_font = QFont()                            # the platform's UI font, a little larger
        text_font.setPointSize(11)
        self.transcript = QTextBrowser()
        self.transcript.setFont(text_font)
        self.transcript.document().setDocumentMargin(12)
        self.transcript.setPlaceholderText("Load a model, then type a message below.")
        self.prompt_edit = QPlainTextEdit()
        self.prompt_edit.setFont(text_font)
        self.prompt_edit.setPlaceholderText("Message (Ctrl+Enter sends)")
        self.prompt_edit.setFixedHeight(78)
        self.send_button = QPushButton("Send")
        self.stop_button = QPushButton("Stop")
        for button in (self.send_button, self.stop_button):
            button.setMinimumWidth(88)
        self.status_label = QLabel("No model loaded.")
        self.status_label.setContentsMargins(6, 0, 0, 0)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setMaximumWidth(200)
        self.progress_bar.setTextVisible(False)

        top = QHBoxLayout()
        top.addWidget(QLabel("Model"))
        top.addWidget(self.model_box, 1)
        top.addWidget(self.open_button)
        top.addWidget(self.load_button)
        buttons = QVBoxLayout()
        buttons.addWidget(self.send_button)
        buttons.addWidget(self.stop_button)
        buttons.addStretch(1)
        bottom = QHBoxLayout()
        bottom.addWidget(self.prompt_edit, 1)
        bottom.addLayout(buttons)
        column = QVBoxLayout()
        column.setContentsMargins(12, 12, 12, 6)
        column.setSpacing(8)
        column.addLayout(top)
        column.addWidget(self.transcript, 1)
        column.addLayout(bottom)
        central = QWidget()
        central.setLayout(column)
        self.setCentralWidget(central)
        self.statusBar().addWidget(self.status_label, 1)
        self.statusBar().addPermanentWidget(self.progress_bar)

        self.load_button.clicked.connect(lambda: self.load_model(self.model_box.currentData()))
        self.open_button.clicked.connect(self._open_file)
        self.send_button.clicked.connect(self.send)
        self.stop_button.clicked.connect(self.stop)
        QShortcut(QKeySequence("Ctrl+Return"), self, activated=self.send)

    def _start_worker(self) -> None:
        self.worker_thread = QThread(self)
        self.worker = Worker()
        self.worker.moveToThread(self.worker_thread)
        # GUI -> worker: queued (the worker lives in worker_thread); worker -> GUI: queued too
        self.request_load.connect(self.worker.load)
        self.request_reply.connect(self.worker.reply)
        # connected to this window's methods (not lambdas), so they run in the GUI thread
        self.worker.progress.connect(self._on_progress)
        self.worker.loaded.connect(self._on_loaded)
        self.worker.prefilling.connect(self._on_prefilling)
        self.worker.piece.connect(self._on_piece)
        self.worker.replied.connect(self._on_replied)
        self.worker.failed.connect(self._on_failed)
        self.cancel_timer = QTimer(self, interval=CANCEL_REPEAT_MS, timeout=self._repeat_cancel)
        self.worker_thread.start()

    def _set_busy(self, busy: str) -> None:
        self.busy = busy
        has_model = bool(self.model_name)
        self.send_button.setEnabled(not busy and has_model)
        self.stop_button.setEnabled(bool(busy))
        for widget in (self.model_box, self.open_button, self.load_button):
            widget.setEnabled(not busy)
        self.progress_bar.setVisible(busy == "load")
        if not busy:
            self.cancel_timer.stop()

    # ---- actions (GUI thread) ----------------------------------------------------------------
    def load_model(self, source: str) -> None:
        """Load a registry name or a .gguf path (in the worker); the picker shows it."""
        source = self.names_by_path.get(os.path.realpath(source), source)
        if self.model_box.findData(source) < 0:
            self.model_box.addItem(os.path.basename(source), source)
        self.model_box.setCurrentIndex(self.model_box.findData(source))
        self.model_name = ""
        self.progress_bar.setValue(0)
        self.status_label.setText(f"Loading {source}…")
        self._set_busy("load")
        self.worker.arm()
        self.request_load.emit(source)

    def _open_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a GGUF model", "", "GGUF models (*.gguf)")
        if path:
            self.load_model(path)

    def send(self) -> None:
        text = self.prompt_edit.toPlainText().strip()
        if not text or self.busy or not self.model_name:
            return
        self.prompt_edit.clear()
        self.messages.append({"role": "user", "content": text})
        self._append_turn("You", USER_COLOR, text)
        self._append_turn(self.model_name, MODEL_COLOR, "")
        self.reply_text = ""
        self.status_label.setText("Rendering the prompt…")
        self._set_busy("reply")
        self.worker.arm()
        self.request_reply.emit(list(self.messages), {"max_new_tokens": self.max_new_tokens})

    def stop(self) -> None:
        if self.busy:
            self.status_label.setText("Stopping…")
            self.worker.request_stop()
            self.cancel_timer.start()

    @Slot()
    def _repeat_cancel(self) -> None:
        self.worker.request_stop()                     # a direct call: the worker thread is busy

    # ---- worker signals (GUI thread) ---------------------------------------------------------
    @Slot(float)
    def _on_progress(self, fraction: float) -> None:
        self.progress_bar.setValue(int(fraction * 1000))

    @Slot()
    def _on_prefilling(self) -> None:
        if not self.cancel_timer.isActive():          # not after Stop
            self.status_label.setText("Reading the prompt…")

    @Slot(str, object)
    def _on_loaded(self, name: str, memory: dict) -> None:
        self.model_name = name.removesuffix(".gguf")
        self.messages.clear()
        self.transcript.clear()
        self.status_label.setText(f"{name} loaded · {memory['kernels']} · {memory['n_threads']} threads · "
                                  f"context {memory['n_ctx']} · {self._memory_text(memory)}")
        self._set_busy("")

    @Slot(str, int, float)
    def _on_piece(self, text: str, n_tokens: int, tok_s: float) -> None:
        self.reply_text += text
        self._insert(text)
        self.status_label.setText(f"Generating · {n_tokens} tokens · {tok_s:.1f} tok/s")

    @Slot(object)
    def _on_replied(self, result: dict) -> None:
        self.last_result = result
        reason = result["finish_reason"]
        if self.reply_text:
            self.messages.append({"role": "assistant", "content": self.reply_text})
        else:
            self.messages.pop()                        # keep user/assistant turns alternating
        if reason in ("cancelled", "length", "context"):
            self._insert({"cancelled": "  [stopped]", "length": "  [max tokens]",
                          "context": "  [context full]"}[reason], muted=True)
        self.status_label.setText(
            f"{result['generated_tokens']} tokens · {result['decode_tok_s']:.1f} tok/s · "
            f"prompt {result['prompt_tokens']} tokens at {result['prefill_tok_s']:.0f} tok/s · "
            f"{self._memory_text(result['memory'])} · {reason}")
        self._set_busy("")

    @Slot(str)
    def _on_failed(self, message: str) -> None:
        if self.busy == "reply":
            self.messages.pop()
            self._insert("  [error]", muted=True)
        self.status_label.setText(message.splitlines()[0] if message else "failed")
        self._set_busy("")

    # ---- transcript --------------------------------------------------------------------------
    @staticmethod
    def _memory_text(memory: dict) -> str:
        return (f"model {memory['weights_bytes'] / MiB:.0f} MiB + KV {memory['kv_cache_bytes'] / MiB:.0f} MiB"
                f" · peak RSS {memory['process_peak_rss_bytes'] / MiB:.0f} MiB")

    def _append_turn(self, who: str, color: str, text: str) -> None:
        cursor = self._end_cursor()
        if not self.transcript.document().isEmpty():
            cursor.insertBlock()
            cursor.insertBlock()
        name = QTextCharFormat()
        name.setForeground(QColor(color))
        name.setFontWeight(QFont.Bold)
        cursor.insertText(who, name)
        cursor.insertBlock()
        cursor.insertText(text, QTextCharFormat())
        self.transcript.setTextCursor(cursor)

    def _insert(self, text: str, muted: bool = False) -> None:
        """Append to the reply being streamed (plain text: a reply is not trusted HTML)."""
        style = QTextCharFormat()
        if muted:
            style.setForeground(QColor("#888888"))
        cursor = self._end_cursor()
        cursor.insertText(text, style)
        self.transcript.setTextCursor(cursor)
        self.transcript.ensureCursorVisible()

    def _end_cursor(self) -> QTextCursor:
        cursor = self.transcript.textCursor()
        cursor.movePosition(QTextCursor.End)
        return cursor

    def closeEvent(self, event) -> None:
        self.worker.request_stop()                     # a reply or load ends within a layer
        self.worker_thread.quit()
        self.worker_thread.wait()
        if self.worker.model is not None:
            self.worker.model.close()
        super().closeEvent(event)


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if pyside_drops_references():
        import PySide6
        print(f"chat.py: PySide6 {PySide6.__version__} on Python {sys.version.split()[0]} has a reference "
              f"counting bug that aborts the process; install 'PySide6-Essentials<6.12' or use "
              f"Python 3.12+", file=sys.stderr)
        return 2
    app = QApplication.instance() or QApplication(sys.argv[:1])
    window = ChatWindow(argv[0] if argv else None)
    window.show()
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
