"""newllm: a notebook-first research kit for New-LLM / CVFP (Context Vector Fixed-Point) recurrent language models.

Data flows one way: config -> data (token ids) -> model -> Phase 1 -> contexts (cache) -> Phase 2 -> metrics -> results.
The subpackages are layers (see the README's "Architecture"): utils, config, data, models, recurrence, evaluation,
plotting, training, experiments, notebook; each imports only from the layers before it.
"""

__version__ = "0.1.0"
