"""The quantization tools: block formats, quantize, recipes, imatrix, GPTQ, evaluate, compare."""
