"""Text in and out of the engine: the o200k vocabulary file (`vocab`), the harmony tokenizer and chat format
(`tokenizer`), incremental detokenization with stop strings (`detokenizer`), and the streaming harmony parser
(`harmony_stream`). Only the standard library is imported here (`python -S -m engine.text.vocab` must work)."""
