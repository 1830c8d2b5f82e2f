"""The contracts between stages: every format one stage writes and another reads, with its one reader.

The dataset dir (`dataset`), the checkpoint (`checkpoint`), which architectures export (`families`),
what a model path holds (`source`), the chat template (`chat_template`), a config's context length
(`context`) and GGUF files turned into HF dirs (`gguf`). It imports no stage (tests/test_imports.py).
"""
