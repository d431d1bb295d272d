"""Exact llama.cpp tokenizers built from GGUF metadata: SPM ('llama') and byte-level BPE ('gpt2').

    tok = Tokenizer.from_metadata(gguf_metadata_dict)
    ids = tok.encode("Hello", add_special=True, parse_special=False)
    text = tok.decode(ids)
"""
from .core import StreamDecoder, Tokenizer
from .pretokenize import PRE_TOKENIZERS
from .vocab import SUPPORTED_MODELS

__all__ = ["Tokenizer", "StreamDecoder", "PRE_TOKENIZERS", "SUPPORTED_MODELS"]
