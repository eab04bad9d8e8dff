"""Instruction-data tools (generate, translate, convert, stats): see the data_gen issue; only the package exists yet."""
