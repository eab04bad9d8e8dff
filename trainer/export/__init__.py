"""Export: a trained model as one GGUF file for llama.cpp, Ollama and LM Studio, and what that needs.

    python -m trainer.export --model models/alpaca-medis-270m --out out/gguf/alpaca-medis-270m-q8_0.gguf --outtype q8_0
    python -m trainer.export.merge --model out-lora --output_dir out-merged

- gguf.py: the export (`python -m trainer.export`): merge, llama.cpp's converter, the Ollama Modelfile;
- check.py: the GGUF reloaded with transformers, its prompt, tokens and logits held to the source model's;
- gotemplate.py: the Modelfile's Go TEMPLATE rendered in Python, for that check;
- merge.py: a LoRA adapter merged into its base as a plain full checkpoint (`python -m trainer.export.merge`).

Nothing here is imported by serving or training.
"""
