"""Serving: a model loaded for chat (inference.py) and the OpenAI-compatible API (openai_api.py).

What a Space ships. It imports models, prompts, defaults and hw, never training modules
(tests/trainer/test_import_graph.py)."""
