"""BPE pre-tokenizers per `tokenizer.ggml.pre` label: the C++ core's (csrc/tokenizer/pretokenize.h
has the splitting rules, llama.cpp's, for each label), with their flags for vocab.py."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

from lowbit import _core


@dataclass(frozen=True)
class PreTokenizer:
    name: str
    clean_spaces: bool = True      # detokenize tidies " ." " 's" etc. (clean_up_tokenization_spaces)
    ignore_merges: bool = False    # a word already in the vocabulary is one token
    add_bos: bool = False          # default when tokenizer.ggml.add_bos_token is absent

    def split(self, text: str) -> List[str]:
        """The chunks ``text`` is cut into before BPE merges each one."""
        return _core.pre_tokenize(self.name, text)


PRE_TOKENIZERS: Dict[str, PreTokenizer] = {
    label: PreTokenizer(label, **flags) for label, flags in _core.pre_tokenizers().items()}
