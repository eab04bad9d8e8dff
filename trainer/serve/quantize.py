"""int8 weights for serving: every linear layer and the output head (`quantize_int8`), or the head alone
(`head_only=True`), per output channel, symmetric. A LoRA adapter is merged first.

    quantize_int8(model, calibration=calibration_ids(tokenizer))   # in place; app.py --quantize int8
    quantize_int8(model, head_only=True)                           # app.py --quantize head

A decoded token reads every weight once: int8 halves the bytes of bf16 and quarters those of fp32 (Gemma 3
270M's tied 262k-word head alone is 168 M of its 268 M weights). The embedding lookup, the norms, attention and
the KV cache keep their dtype; a head tied to the input embedding gets an int8 copy of its own, and the lookup
still reads the original rows.

The kernel, chosen by timing (BENCHMARKS.md, "Inference: int8"): fbgemm's int8 x int8 GEMM (PyTorch's x86
engine: AVX2, AVX-512, VNNI), each input row quantized to int8 on the fly (`dynamic`). It read the head at ~27
GB/s for one token and kept up with bf16 on a prompt. PyTorch's weight-only int8 kernel (`_weight_int8pack_mm`)
was no faster than bf16 on the head for one token, 4x slower on a prompt and 10x slower with fp32 input; torchao's
weight-only path de-quantizes the whole weight on every call unless compiled. `weight_only` (that ATen kernel) is
what CUDA and CPUs without fbgemm get.

Answers, measured as the export check measures a GGUF (greedy next-token agreement with the fp32 model along 48
held-out answers; BENCHMARKS.md):
- a row's input is scaled to a max |x| of 1 and quantized alone (a fixed row of +1 and -1 pins the shared range),
  so its result does not depend on the other rows of its batch: batched answers equal one-at-a-time ones;
- Gemma's activations have channels 10-60x above the median, which would take most of each row's 8 bits:
  SmoothQuant's per-channel factors, calibrated on CALIBRATION at load, move part of that range into the weights
  (agreement 91.9 % -> 95.6 %);
- a tied head's int8 logits only pick candidates: the top REFINED of each row are recomputed from the embedding's
  own weights, so greedy decoding never departs from the unquantized head (the head alone in int8: 100 %);
- the layers of the body cost the rest: per-channel int8 weights alone (activations exact) reached 98.2 %, every
  layer in int8 96.5 %, against 98.7 % for the model in bf16 and for the q8_0 GGUF (blocks of 32, finer than a
  channel). So `--quantize auto` puts only the head in int8 where bf16 is fast, and every layer where it is not.
"""

from __future__ import annotations

import functools
import warnings

import torch

# How much of the activations' range smoothing moves into the weights (SmoothQuant's alpha). Chosen on
# alpaca-medis-270m's layers: relative output error of the int8 layers, mean over each kind, alpha 0.5 / 0.65 / 0.8:
# down_proj 2.9 / 2.1 / 2.1 %, the others 1.0-1.5 % throughout; 1.0-5.0 % without smoothing (BENCHMARKS.md).
SMOOTHING_ALPHA = 0.65
# Candidates per row whose logits a tied head recomputes exactly (Int8Linear.forward).
REFINED = 32

# The text whose activations calibrate the smoothing: patient questions and answers in the shape the demo serves
# (Indonesian, with English words patients use), written for this purpose; outlier channels are a property of the
# model more than of the text, so a few hundred tokens find them.
CALIBRATION = (
    ("Dokter, saya demam tinggi sejak tiga hari, sakit kepala, nyeri di belakang mata dan badan pegal. Apakah ini "
     "demam berdarah?",
     "Keluhan Anda bisa mengarah ke demam berdarah dengue, tetapi juga infeksi virus lain. Minum banyak cairan, "
     "istirahat, dan periksa ke puskesmas atau dokter hari ini untuk tes darah. Segera ke IGD bila muncul nyeri perut "
     "hebat, muntah terus, mimisan, gusi berdarah atau badan lemas dan dingin."),
    ("Anak saya batuk pilek dua hari, tidak demam, masih mau makan. Perlu ke dokter?",
     "Batuk pilek tanpa demam pada anak yang masih aktif dan mau makan biasanya common cold. Beri minum cukup dan "
     "istirahat. Bawa ke dokter bila batuk lebih dari dua minggu, napas cepat atau sesak, atau demam tinggi."),
    ("I have had chest pain for an hour, spreading to my left arm, and I am sweating.",
     "Nyeri dada yang menjalar ke lengan kiri dengan keringat dingin bisa tanda serangan jantung. Ini darurat: "
     "hubungi ambulans 119 atau langsung ke IGD terdekat sekarang. Bukan nasihat medis."),
)


class QuantizeError(ValueError):
    """A model this module cannot quantize as asked; the message says why and what to do."""


def dynamic_kernel_available() -> bool:
    return bool({"fbgemm", "x86"} & set(torch.backends.quantized.supported_engines))


@functools.cache
def reduce_range() -> bool:
    """Whether fbgemm must quantize inputs to 7 bits here. Without VNNI its AVX2 kernels add pairs of uint8 x int8
    products in int16, which saturates for 8-bit inputs near their range's ends (PyTorch's default therefore
    reduces the range). Found out by one extreme product (all inputs at the top of the range, all weights at
    127), not read from CPU flags."""
    cols = 64
    weight = torch.full((1, cols), 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        packed = torch.ops.quantized.linear_prepack(
            torch.quantize_per_channel(weight * 127, torch.tensor([1.0], dtype=torch.double), torch.zeros(1, dtype=torch.long),
                                       axis=0, dtype=torch.qint8), None)
    x = torch.cat([_bounds(cols), torch.ones(1, cols)])
    y = torch.ops.quantized.linear_dynamic(x, packed, False)[1, 0]
    return not abs(float(y) - 127 * cols) < 0.02 * 127 * cols


def _bounds(cols: int) -> torch.Tensor:
    """The row that pins every batch's input range to [-1, 1] (see the module docstring)."""
    bounds = torch.zeros(1, cols)
    bounds[0, 0], bounds[0, -1] = 1.0, -1.0
    return bounds


def int8_per_channel(weight: torch.Tensor, rows: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 weight, fp32 scale per output row): symmetric, round to nearest, max |w| of a row -> 127. A block of
    `rows` at a time, so a 262k-row head needs no fp32 copies of itself at load (peak memory)."""
    q = torch.empty(weight.shape, dtype=torch.int8, device=weight.device)
    scale = torch.empty(weight.shape[0], dtype=torch.float32, device=weight.device)
    for start in range(0, weight.shape[0], rows):
        w = weight[start : start + rows].detach().float()
        s = (w.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny)
        q[start : start + rows] = torch.round(w / s[:, None]).clamp(-127, 127)
        scale[start : start + rows] = s
    return q, scale


def smoothing(input_peak: torch.Tensor, weight: torch.Tensor, alpha: float = SMOOTHING_ALPHA) -> torch.Tensor:
    """SmoothQuant's per-input-channel factors s (x W^T = (x / s)(W s)^T): channels whose inputs peak far above the
    rest (Gemma's reach 10-60x the median) would otherwise take most of each row's 8-bit range; s moves part of
    their range into the weights, which are quantized per output channel."""
    tiny = 1e-5
    s = input_peak.float().clamp(min=tiny) ** alpha / weight.detach().float().abs().amax(dim=0).clamp(min=tiny) ** (1 - alpha)
    return s.clamp(min=tiny)


class Int8Linear(torch.nn.Module):
    """y = x W^T + b with W stored as int8 per output channel (see the module docstring for the kernels).
    `input_peak` (max |x| per input channel, from calibration) smooths the dynamic kernel's inputs. An int8 `weight`
    comes with its `scale` (per output row) and is taken as it is."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, kernel: str | None = None,
                 input_peak: torch.Tensor | None = None, exact: torch.Tensor | None = None, scale: torch.Tensor | None = None):
        super().__init__()
        # A tied head's weights in their own dtype (the input embedding, kept for the lookup anyway): the top
        # REFINED outputs of every row are recomputed from them (see `forward`).
        self.exact = exact
        self.out_features, self.in_features = weight.shape
        on_cpu = weight.device.type == "cpu"
        self.kernel = kernel or ("dynamic" if on_cpu and dynamic_kernel_available() else "weight_only")
        smooth = None
        if weight.dtype == torch.int8 and (scale is None or input_peak is not None):
            raise QuantizeError("an int8 weight needs its scale per output row, and cannot be smoothed.")
        if self.kernel == "dynamic" and input_peak is not None and exact is None:  # a rescored head needs no smoothing
            smooth = smoothing(input_peak, weight)
            weight = weight.detach().float() * smooth
        self.register_buffer("smooth", None if smooth is None else 1 / smooth, persistent=False)
        q, scale = (weight, scale.float()) if weight.dtype == torch.int8 else int8_per_channel(weight)
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone(), persistent=False)
        if self.kernel == "dynamic":
            if not on_cpu:
                raise QuantizeError("the dynamic int8 kernel runs on the CPU only; use kernel='weight_only'.")
            with warnings.catch_warnings():  # quantized tensors are deprecated in favour of torchao; still the fast CPU path
                warnings.simplefilter("ignore")
                qweight = torch._make_per_channel_quantized_tensor(q, scale.double(), torch.zeros_like(scale, dtype=torch.long), 0)
                self._packed = torch.ops.quantized.linear_prepack(qweight, None)
            del qweight, q
            self.register_buffer("bounds", _bounds(self.in_features), persistent=False)
            self.reduce_range = reduce_range()
        elif self.kernel == "weight_only":
            self.register_buffer("qweight", q, persistent=False)
            self.register_buffer("scale", scale, persistent=False)
        else:
            raise QuantizeError(f"unknown int8 kernel {kernel!r}; use 'dynamic' or 'weight_only'.")

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, kernel: str | None = None, input_peak: torch.Tensor | None = None) -> Int8Linear:
        return cls(linear.weight, linear.bias, kernel, input_peak)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, kernel={self.kernel}"
                + (", smoothed" if self.smooth is not None else "") + (f", top {REFINED} exact" if self.exact is not None else ""))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if self.kernel == "dynamic":
            rows = rows.float() if self.smooth is None else rows.float() * self.smooth
            peak = torch.linalg.vector_norm(rows, float("inf"), dim=1, keepdim=True).clamp_(min=1e-30)
            y = torch.ops.quantized.linear_dynamic(torch.cat([self.bounds, rows / peak]), self._packed, self.reduce_range)[1:]
            y = y.mul_(peak)
        else:
            scale = self.scale if rows.dtype == torch.float32 else self.scale.to(rows.dtype)
            try:
                y = torch.ops.aten._weight_int8pack_mm(rows.contiguous(), self.qweight, scale)
            except (RuntimeError, NotImplementedError):  # a device or dtype without the kernel: de-quantize
                y = torch.nn.functional.linear(rows, self.qweight.to(rows.dtype)) * scale
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        if self.exact is not None:
            # The head's int8 logits pick the candidates, the exact weights score them: greedy decoding and the
            # top of a sampled distribution then equal the unquantized model's (unless its best token falls outside
            # the int8 top REFINED, never seen on the agreement check), at the cost of REFINED rows of the embedding.
            top = y.topk(min(REFINED, self.out_features), dim=-1).indices
            exact = torch.einsum("md,mkd->mk", x.reshape(-1, self.in_features).to(self.exact.dtype), self.exact[top])
            y = y.scatter_(-1, top, exact.to(y.dtype))
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)


def quantize_int8(model: torch.nn.Module, kernel: str | None = None, calibration: torch.Tensor | None = None,
                  head_only: bool = False) -> torch.nn.Module:
    """Every nn.Linear of `model` (the output head included, tied or not; with `head_only` the head alone) replaced
    by an Int8Linear, in place. `calibration` (token ids, e.g. `calibration_ids(tokenizer)`) is run through the model
    first: each layer's input peaks smooth the dynamic kernel's inputs (`smoothing`)."""
    if hasattr(model, "merge_and_unload") or hasattr(model, "peft_config"):
        raise QuantizeError("merge the LoRA adapter first (model.merge_and_unload()): int8 layers take no adapter.")
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    linears = [(name, module) for name, module in model.named_modules()
               if isinstance(module, torch.nn.Linear) and (module is head or not head_only)]
    if not linears:
        raise QuantizeError(f"{type(model).__name__} has no {'output head' if head_only else 'nn.Linear layers'} to quantize.")
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    tied = head is not None and embedding is not None and head.weight is embedding.weight
    # A tied head is rescored, not smoothed (Int8Linear): it needs no peaks, and the calibration pass then skips its
    # logits over every position (349 x 262k floats for Gemma, 0.37 GB at load).
    smoothed = [(name, module) for name, module in linears if not (tied and module is head)]
    peaks = input_peaks(model, smoothed, calibration, every_logit=len(smoothed) == len(linears)) if calibration is not None else {}
    for name, module in linears:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        exact = embedding.weight.detach() if tied and module is head else None
        setattr(parent, attr, Int8Linear(module.weight, module.bias, kernel, peaks.get(name), exact))
    # A tied head (Gemma's) now holds its own int8 copy; untie, or a later tie_weights() would put the
    # embedding's module back.
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "tie_word_embeddings", False):
        config.tie_word_embeddings = False
        text = getattr(config, "get_text_config", lambda: None)()
        if text is not None:
            text.tie_word_embeddings = False
    return model


def input_peaks(model: torch.nn.Module, linears: list[tuple[str, torch.nn.Linear]], ids: torch.Tensor,
                every_logit: bool = True) -> dict[str, torch.Tensor]:
    """max |x| per input channel of each linear layer, over one forward pass of `ids` (the head's logits at the last
    position only unless `every_logit`: then the head's own peaks cover one position)."""
    peaks: dict[str, torch.Tensor] = {}

    def record(name):
        def hook(module, args):
            peak = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(dim=0).float()
            peaks[name] = torch.maximum(peaks[name], peak) if name in peaks else peak
        return hook

    hooks = [module.register_forward_pre_hook(record(name)) for name, module in linears]
    try:
        with torch.inference_mode():
            model(input_ids=ids.reshape(1, -1).to(model.device), **({} if every_logit else {"logits_to_keep": 1}))
    finally:
        for hook in hooks:
            hook.remove()
    return peaks


def calibration_ids(tokenizer) -> torch.Tensor:
    """CALIBRATION as a conversation in the model's own chat template, tokenized."""
    messages = [m for question, answer in CALIBRATION for m in ({"role": "user", "content": question},
                                                                {"role": "assistant", "content": answer})]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])


def int8_layer_count(model: torch.nn.Module) -> int:
    return sum(isinstance(m, Int8Linear) for m in model.modules())


@functools.cache
def int8_faster_here(dtype: torch.dtype, rows: int = 16384, cols: int = 2048) -> tuple[bool, str]:
    """Whether an int8 matrix-vector product (a decode step's linear layers) beats one in `dtype` on this CPU, as
    the unquantized model would run it (oneDNN on or off as `hw.one_token_faster_without_onednn` chose). Timed on
    a matrix larger than the caches (~0.3 s here, most of it packing the int8 matrix), never read from CPU flags;
    once per process, as hw.py's choices are, so every model loaded here is served alike."""
    from trainer.hw import call_ms, one_token_faster_without_onednn

    int8 = Int8Linear(torch.ones((rows, cols), dtype=torch.int8), scale=torch.full((rows,), 0.01))
    dense = torch.full((rows, cols), 0.01, dtype=dtype)
    x, x32 = torch.full((1, 1, cols), 0.01, dtype=dtype), torch.full((1, 1, cols), 0.01)
    onednn = not (dtype == torch.bfloat16 and one_token_faster_without_onednn()[0])
    dense_ms = call_ms(lambda: torch.nn.functional.linear(x, dense), onednn)
    int8_ms = call_ms(lambda: int8(x32))
    name = str(dtype).removeprefix("torch.")
    return int8_ms < 0.8 * dense_ms, f"matrix-vector int8 {int8_ms:.2f} ms, {name} {dense_ms:.2f} ms"
