"""The runtime: load, Model, sessions, generation, sampling, chat templates, tokenizer."""
