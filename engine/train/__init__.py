"""Training the tiny harmony model: `gptoss train-tiny-model DIR`.

Flow: `corpus` generates harmony conversations from templates (rendered exactly as the server renders prompts) ->
`trainer` trains the reference model's blocks on them over a compact sub-vocabulary, the experts through MXFP4
fake quantization -> the weights are written by `engine.weights.tiny_model.write_checkpoint` in the real checkpoint format
-> `evaluation` measures each task on the written checkpoint through the engine.
"""
