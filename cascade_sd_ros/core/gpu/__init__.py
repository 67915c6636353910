"""Static path for the stages' models: static KV cache, our own Llama step over HF weights, CUDA graphs
per step size.

Import `StaticAdapter` (any LLaVA-family stage with a Llama language model: the VideoLlava verifier,
the Llava drafter and refiner) and `static_support` from `cascade_sd_ros.core.gpu.verifier`;
`core.stage_model` picks this path for a node (``backend=auto`` on CUDA). Everything here also runs
eagerly on a CPU (tests), and graph capture only happens when the model is on CUDA.
"""
