"""The pipeline's stages, one module each; a stage imports no other stage."""

STAGE_NAMES = ("data", "finetune", "label", "train", "evaluate", "prune", "export", "quantize", "benchmark")
"""The stages in pipeline order (the keys of :data:`pipeline.runner.STAGES`): the choices of
``distill run --until`` and ``--force``, without importing the stages."""
