"""What every front end of a model shows and starts from: the page, the Space and the Ollama Modelfile.

Torch-free, so `trainer.export` and the model card read it without loading a serving stack.
"""

DISCLAIMER = (
    "⚠️ **Bukan pengganti dokter.** Jawaban dibuat oleh model bahasa dan bisa salah. Untuk keadaan "
    "darurat atau keluhan serius, segera hubungi tenaga kesehatan. *(Not a substitute for a doctor.)*"
)
# Greedy with a light repetition penalty: the shipped 270M model loops on drug names without it
# (README "The model").
GENERATION = {"max_new_tokens": 256, "temperature": 0.0, "top_p": 0.9, "repetition_penalty": 1.1}
# --quantize (app.py, a Space's config.yaml `quantize:`, trainer.evaluate; trainer/serve/quantize.py): "int8" = every
# linear layer and the output head in int8, "head" = the head only, "none"; "auto" = what decodes fastest here
# without losing answers, timed at load (never int8 on CUDA).
QUANTIZE_CHOICES = ("auto", "int8", "head", "none")
