"""What every front end of a model shows and starts from: the page, the Spaces, the model cards and the Ollama
Modelfile. Torch-free, so the export and the Hub code read it without loading a serving stack.
"""

# The warning every front end carries, once per language it is shown in: Indonesian on the page and in the
# Modelfile (for the people who ask), English in model cards and Space READMEs (a test checks their copies).
DISCLAIMER = (
    "⚠️ **Bukan pengganti dokter.** Jawaban dibuat oleh model bahasa dan bisa salah. Untuk keadaan "
    "darurat atau keluhan serius, segera hubungi tenaga kesehatan. *(Not a substitute for a doctor.)*"
)
NOT_MEDICAL_ADVICE = (
    "**Not medical advice.** This model is a research artefact trained on synthetic, machine-generated "
    "doctor–patient conversations. Its answers can be wrong, incomplete or dangerous. It is not a substitute "
    "for a doctor: for an emergency or a serious complaint, contact a health professional. "
    "*(Bukan pengganti dokter.)*"
)
# Greedy with a light repetition penalty: the shipped 270M model loops on drug names without it
# (README "The model"). The page's sliders, the Ollama Modelfile and `trainer.evaluate --ask` start here.
GENERATION = {"max_new_tokens": 256, "temperature": 0.0, "top_p": 0.9, "repetition_penalty": 1.1}
# alpaca-lora's generate.py sampling settings: what the Spaces of the fine-tuned 7B / 1.7B models start from.
ALPACA_LORA_SAMPLING = {**GENERATION, "temperature": 0.1, "top_p": 0.75}
# One message, on the page, the API and in a rating's correction: longer input is refused with a message, not
# truncated silently.
MAX_INPUT_CHARS = 4000
# --quantize (app.py, a Space's config.yaml `quantize:`, trainer.evaluate; trainer/serve/quantize.py): "int8" = every
# linear layer and the output head in int8, "head" = the head only, "none"; "auto" = what decodes fastest here
# without losing answers, timed at load (never int8 on CUDA).
QUANTIZE_CHOICES = ("auto", "int8", "head", "none")
