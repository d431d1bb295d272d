"""``lowbit chat``: a terminal chat with line editing, history, commands and streaming replies.

Replies are written as they stream, unwrapped (the terminal wraps long lines). While a reply
streams, the terminal does not echo keys, and whatever was typed meanwhile is discarded when the
reply ends (so stray keys never land inside the reply or in the next prompt); Ctrl+C still stops
the reply."""
from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import Callable, Dict, Iterator, List, Optional

from lowbit.cli.common import stream_reply
from lowbit.errors import LowbitError, TemplateError
from lowbit.runtime.progress import human_bytes
from lowbit.runtime.registry import home

PROMPT = ">>> "
CONTINUATION = "... "
HELP = """Commands:
  /help                     this help
  /bye, /exit               leave (Ctrl+D works too)
  /clear                    start a new conversation (keeps the system prompt)
  /set PARAM VALUE          temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed,
                            max_tokens (num_predict), num_ctx (reloads the model with that context)
  /set parameter PARAM VALUE  the same, as ollama writes it
  /set system TEXT          set the system prompt (starts a new conversation)
  /set verbose, /set quiet  show or hide speed figures after each reply
  /format json, /format off replies as JSON objects (constrained while sampling), or free text
  /show                     model info and current parameters
  /stats                    tokens, speed and memory of the last reply
  /save FILE, /load FILE    save or load the conversation as JSON
Input between lines of \"\"\" is sent as one multi-line message. Ctrl+C stops a reply."""

PARAMS: Dict[str, Callable[[str], object]] = {
    "temperature": float, "top_k": int, "top_p": float, "min_p": float,
    "repetition_penalty": float, "repeat_last_n": int, "seed": int, "max_tokens": int,
}
ALIASES = {"repeat_penalty": "repetition_penalty", "num_predict": "max_tokens"}   # ollama's names
SAMPLING_KEYS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "repeat_last_n", "seed")
LIMITS = {"length": "max tokens", "context": "context full"}      # finish reasons that cut a reply


def check_params(params: dict) -> None:
    """ValueError naming the bad parameter, if any."""
    from lowbit.runtime.sampling import SamplingParams
    SamplingParams(**{k: params[k] for k in SAMPLING_KEYS}).validate()
    if params["max_tokens"] <= 0:
        raise ValueError("max_tokens must be positive")


@contextlib.contextmanager
def keys_silenced(stream) -> Iterator[None]:
    """No echo of typed keys while a reply streams (Ctrl+C still works); typed-ahead input is
    discarded afterwards. Does nothing when ``stream`` is not a terminal."""
    try:
        import termios
    except ImportError:                  # not a POSIX terminal API (Windows)
        yield
        return
    try:
        fd = stream.fileno()
        saved = termios.tcgetattr(fd)
    except (termios.error, OSError, ValueError, AttributeError):   # not a terminal (a pipe, a file)
        yield
        return
    quiet = list(saved)
    quiet[3] &= ~termios.ECHO
    termios.tcsetattr(fd, termios.TCSANOW, quiet)
    try:
        yield
    finally:
        termios.tcflush(fd, termios.TCIFLUSH)
        termios.tcsetattr(fd, termios.TCSANOW, saved)


def _setup_readline() -> Optional[str]:
    try:
        import readline
    except ImportError:
        return None
    path = str(home() / "chat_history")
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        readline.read_history_file(path)
    except OSError:
        pass
    readline.set_history_length(1000)
    return path


def _save_history(path: Optional[str]) -> None:
    if not path:
        return
    try:
        import readline
        readline.write_history_file(path)
    except (ImportError, OSError):
        pass


class ChatSession:
    """Conversation state and commands, separate from terminal I/O so it can be driven by tests."""

    def __init__(self, model, params: dict, system: Optional[str] = None, context_shift: bool = False,
                 out=sys.stdout, reload: Optional[Callable[[int], object]] = None, keys=sys.stdin):
        self.model = model
        self.params = dict(params)
        self.system = system
        self.context_shift = context_shift
        self.messages: List[dict] = []
        self.out = out
        self.last = None
        self.verbose = False
        self.reload = reload          # n_ctx -> a new model with that context (for /set num_ctx)
        self.keys = keys              # the terminal whose echo is off while a reply streams
        self.format: Optional[str] = None   # "json": replies constrained to a JSON object

    def say(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def conversation(self) -> List[dict]:
        sys_msg = [{"role": "system", "content": self.system}] if self.system else []
        return sys_msg + [{"role": m["role"], "content": m["content"]} for m in self.messages]

    # ---- commands -------------------------------------------------------------------------
    def command(self, line: str) -> bool:
        """Runs a /command; returns False when the session should end."""
        parts = line.strip().split(maxsplit=2)
        cmd = parts[0].lower()
        if cmd in ("/bye", "/exit", "/quit"):
            return False
        if cmd in ("/help", "/?"):
            self.say(HELP)
        elif cmd == "/clear":
            self.messages = []
            self.say("(new conversation)")
        elif cmd == "/set":
            self._set(parts[1:])
        elif cmd == "/show":
            self._show()
        elif cmd == "/stats":
            self._stats()
        elif cmd == "/format":
            self._format(parts[1].lower() if len(parts) > 1 else "")
        elif cmd in ("/save", "/load"):
            if len(parts) < 2:
                self.say(f"usage: {cmd} FILE")
            else:
                self._save(parts[1]) if cmd == "/save" else self._load(parts[1])
        else:
            self.say(f"unknown command {parts[0]!r}; /help lists the commands")
        return True

    def _set(self, args: List[str]) -> None:
        names = ["system", "verbose", "quiet", "num_ctx", *PARAMS, *ALIASES]
        if args and args[0].lower() == "parameter":          # ollama: /set parameter NAME VALUE
            args = args[1].split(maxsplit=1) if len(args) > 1 else []
        if not args:
            self.say("usage: /set PARAM VALUE (" + ", ".join(names) + ")")
            return
        name = ALIASES.get(args[0].lower(), args[0].lower())
        if name == "system":
            self.system = args[1] if len(args) > 1 else None
            self.messages = []
            self.say("(system prompt set; new conversation)" if self.system else "(system prompt cleared)")
            return
        if name in ("verbose", "quiet"):
            on = args[1].lower() not in ("0", "false", "off", "no") if len(args) > 1 else True
            self.verbose = on if name == "verbose" else not on
            self.say(f"(verbose {'on' if self.verbose else 'off'})")
            return
        if name == "num_ctx":
            self._set_num_ctx(args[1] if len(args) > 1 else "")
            return
        if name not in PARAMS or len(args) < 2:
            self.say(f"usage: /set PARAM VALUE with PARAM one of: {', '.join(names)}")
            return
        try:
            value = PARAMS[name](args[1])
        except ValueError:
            self.say(f"{name} needs a {PARAMS[name].__name__}, got {args[1]!r}")
            return
        trial = dict(self.params, **{name: value})
        try:
            check_params(trial)
        except ValueError as e:
            self.say(f"not set: {e}")
            return
        self.params = trial
        self.say(f"(set {name} = {value})")

    def _format(self, value: str) -> None:
        if value not in ("json", "off"):
            self.say("usage: /format json (replies are JSON objects) or /format off (free text)")
            return
        self.format = None if value == "off" else value
        self.say(f"(format {value})")

    def _set_num_ctx(self, text: str) -> None:
        try:
            n_ctx = int(text)
            if n_ctx <= 0:
                raise ValueError
        except ValueError:
            self.say(f"num_ctx needs a positive integer, got {text!r}")
            return
        if self.reload is None:
            self.say("num_ctx cannot be changed here (no way to reload the model)")
            return
        try:
            new = self.reload(n_ctx)
        except (LowbitError, ValueError, OSError) as e:
            self.say(f"not set: {e}")
            return
        old, self.model = self.model, new
        old.close()
        self.say(f"(set num_ctx = {self.model.n_ctx}; model reloaded, conversation kept)")

    def _show(self) -> None:
        m = self.model
        mem = m.memory()
        self.say(f"model       {os.path.basename(m.path)} ({m.architecture})")
        self.say(f"context     {m.n_ctx} tokens, KV cache {mem.get('kv_type', '?')}")
        self.say(f"memory      weights {human_bytes(mem.get('weights_bytes', 0))}, "
                 f"KV {human_bytes(mem.get('kv_cache_bytes', 0))}")
        self.say(f"system      {self.system if self.system else '(none)'}")
        self.say(f"format      {self.format or 'text'}")
        self.say("parameters  " + ", ".join(f"{k}={v}" for k, v in self.params.items()))

    def _stats(self) -> None:
        g = self.last
        if g is None:
            self.say("no reply yet")
            return
        self.say(f"prompt      {g.prompt_tokens} tokens ({g.cached_prompt_tokens} reused from cache), "
                 f"{g.prefill_tok_s:.1f} tok/s")
        self.say(f"reply       {g.generated_tokens} tokens, {g.decode_tok_s:.1f} tok/s, "
                 f"finish: {g.finish_reason}")
        self.say(f"memory      peak RSS {human_bytes(g.peak_memory_bytes)}")

    def _save(self, path: str) -> None:
        data = {"system": self.system, "messages": self.messages, "params": self.params}
        try:
            tmp = path + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=2, ensure_ascii=False)
            os.replace(tmp, path)
            self.say(f"(saved {len(self.messages)} messages to {path})")
        except OSError as e:
            self.say(f"cannot save to {path}: {e.strerror or e}")

    def _load(self, path: str) -> None:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            msgs = data["messages"]
            if not all(isinstance(m, dict) and isinstance(m.get("role"), str)
                       and isinstance(m.get("content"), str) for m in msgs):
                raise ValueError("messages must be objects with string role and content")
            saved = data.get("params") or {}
            if not isinstance(saved, dict):
                raise ValueError("params must be an object")
            params = dict(self.params, **{k: None if v is None and k == "seed" else PARAMS[k](v)
                                          for k, v in saved.items() if k in PARAMS})
            check_params(params)
        except (OSError, ValueError, KeyError, TypeError) as e:
            self.say(f"cannot load {path}: {e}")
            return
        self.messages = msgs
        self.params = params
        self.system = data.get("system", self.system)
        self.say(f"(loaded {len(msgs)} messages and the sampling settings from {path})")

    # ---- a turn -----------------------------------------------------------------------------
    def reply(self, text: str) -> None:
        self.messages.append({"role": "user", "content": text})
        kw = dict({k: self.params[k] for k in SAMPLING_KEYS}, max_new_tokens=self.params["max_tokens"],
                  json=self.format == "json")
        while True:
            try:
                ids = self.model.chat_ids(self.conversation())
            except TemplateError as e:
                self.messages.pop()
                self.say(f"chat template error: {e}")
                return
            if len(ids) < self.model.n_ctx - 16:
                break
            if self.context_shift and len(self.messages) > 2:
                self.messages = self.messages[2:]       # forget the oldest exchange
                continue
            self.messages.pop()
            self.say(f"(the conversation needs {len(ids)} tokens but the context holds {self.model.n_ctx}; "
                     f"use /clear to start over{'' if self.context_shift else ', or restart with --context-shift'})")
            return
        stream = None
        interrupted = False
        try:
            with keys_silenced(self.keys):
                stream = self.model.chat(self.conversation(), stream=True, context_shift=self.context_shift, **kw)
                stream_reply(self.model, stream, self.out)   # a reply ended early frees the model at once
        except KeyboardInterrupt:         # Ctrl+C at any point of the turn, prefill included
            interrupted = True
        if stream is None:
            self.messages.pop()
            self.say(" [interrupted]")
            return
        g = stream.result
        self.last = g
        msg = {"role": "assistant", "content": g.text}
        if interrupted or g.finish_reason == "cancelled":
            msg["interrupted"] = True
            self.out.write(" [interrupted]")
        elif g.finish_reason in LIMITS:
            self.out.write(f" [reply cut: {LIMITS[g.finish_reason]}]")
        self.messages.append(msg)
        self.say("\n")
        if self.verbose:
            self._stats()


def read_message(read: Callable[[str], str]) -> str:
    """One user message: a line, or the lines between two lines of \"\"\"."""
    line = read(PROMPT)
    if line.strip() != '"""' and not line.lstrip().startswith('"""'):
        return line
    first = line.strip()[3:]
    lines = [first] if first else []
    while True:
        nxt = read(CONTINUATION)
        if nxt.rstrip().endswith('"""'):
            tail = nxt.rstrip()[:-3]
            if tail:
                lines.append(tail)
            return "\n".join(lines)
        lines.append(nxt)


def run_repl(model, params: dict, system: Optional[str] = None, context_shift: bool = False,
             reload: Optional[Callable[[int], object]] = None) -> int:
    """The chat loop; returns the exit status. A model loaded by /set num_ctx is closed here."""
    session = ChatSession(model, params, system=system, context_shift=context_shift, reload=reload)
    history = _setup_readline()
    session.say('Type a message, /help for commands, """ for multi-line input, Ctrl+D to exit.')
    try:
        while True:
            try:
                text = read_message(input)
            except KeyboardInterrupt:
                session.say("\n(use /bye or Ctrl+D to exit)")
                continue
            except EOFError:
                session.say("")
                break
            if not text.strip():
                continue
            if text.lstrip().startswith("/"):
                if not session.command(text):
                    break
                continue
            try:
                session.reply(text)
            except LowbitError as e:
                session.say(f"\nerror: {e}")
    finally:
        _save_history(history)
        if session.model is not model:
            session.model.close()
    return 0
