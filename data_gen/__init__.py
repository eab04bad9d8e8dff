"""Instruction-data tools: `python -m data_gen {generate,translate,convert,stats} --help`.

generate (self-instruct through an OpenAI-compatible server), translate (English Alpaca data into
Indonesian, aligned by source_index), convert and stats; see data_gen/__main__.py.
"""
