"""The quantization tools: block formats, quantize, recipes, imatrix, GPTQ, AWQ, evaluate, compare."""

# Quantization methods (``quantize(method=...)``, ``lowbit quantize --method``): rtn rounds each
# block (imatrix-weighted when one is given); gptq: error feedback (``gptq``); awq: activation-aware
# scales folded into the norms (``awq``), then importance-weighted rounding; awq+gptq: the scales,
# then GPTQ on the scaled matrices. The last three need calibration text.
METHODS = ("rtn", "gptq", "awq", "awq+gptq")
CALIBRATED = ("gptq", "awq", "awq+gptq")
