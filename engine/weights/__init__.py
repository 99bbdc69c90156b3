"""Checkpoint I/O: reading a gpt-oss checkpoint (`checkpoint`, through the `safetensors` package), the MXFP4 expert
format (`mxfp4`), and writing small checkpoints in the real format (`tiny_model`, `gptoss make-tiny-model`)."""
