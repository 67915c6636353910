"""GPU verifier path: static KV cache, our own Llama step over HF weights, CUDA graphs per step size.

Import `StaticVerifierAdapter` from `cascade_sd_ros.core.gpu.verifier`; everything here also runs
eagerly on a CPU (tests), and graph capture only happens when the model is on CUDA.
"""
