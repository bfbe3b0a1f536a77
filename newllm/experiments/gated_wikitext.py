"""The gated LM on WikiText from one call: data, word tokenizer, training and the run's files."""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path
from typing import Optional

from newllm.config.models import GatedLMConfig
from newllm.config.training import GatedTrainConfig
from newllm.data.wikitext import WikiTextData, prepare_wikitext
from newllm.training.gated import EpochCallback, GatedRunResult, PathLike, experiment_name, train_gated_lm


def run_wikitext(
    run_dir: PathLike,
    model_cfg: GatedLMConfig = GatedLMConfig(),
    train_cfg: GatedTrainConfig = GatedTrainConfig(),
    source: str = "auto",
    *,
    builtin_documents: tuple[int, int] = (200, 20),
    device: str = "auto",
    resume_from: Optional[PathLike] = None,
    callback: Optional[EpochCallback] = None,
    progress: bool = True,
) -> tuple[GatedRunResult, WikiTextData]:
    """One call from data to trained model: :func:`~newllm.data.wikitext.prepare_wikitext` then
    :func:`~newllm.training.gated.train_gated_lm`.

    The word tokenizer gets ``model_cfg.vocab_size`` entries; a corpus with fewer distinct words gives a smaller
    vocabulary, and the model is then sized to it (with a warning). The tokenizer is saved beside the run's files as
    ``{name}_tokenizer.json`` (load it with ``newllm.data.tokenizers.load_tokenizer``).
    """
    data = prepare_wikitext(train_cfg, source, model_cfg.vocab_size, builtin_documents, progress)
    if data.tokenizer.vocab_size != model_cfg.vocab_size:
        warnings.warn(
            f"the corpus has only {data.tokenizer.vocab_size - 4} distinct training words: the model's vocab_size is "
            f"set to {data.tokenizer.vocab_size} instead of {model_cfg.vocab_size}", stacklevel=2)
        model_cfg = replace(model_cfg, vocab_size=data.tokenizer.vocab_size)
    name = experiment_name(model_cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    data.tokenizer.save(run_dir / f"{name}_tokenizer.json")
    result = train_gated_lm(
        model_cfg, train_cfg, data.train, data.val, run_dir, name=name, tokenizer_name=data.tokenizer_label,
        device=device, resume_from=resume_from, callback=callback, progress=progress,
        extra_config={"data_source": data.source, "data_stats": data.stats},
    )
    result.paths["tokenizer"] = run_dir / f"{name}_tokenizer.json"
    return result, data
