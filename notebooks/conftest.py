"""``pytest --nbval-lax notebooks/``: the notebooks' runs go to a scratch folder, never into the repo's results/.

The kernels nbval starts inherit this process's environment, and the notebooks' results-folder helper
(newllm.notebook_pipelines.find_results_dir) honours NEWLLM_RESULTS_DIR. A folder already set is kept.
"""

import os
import shutil
import tempfile

_SCRATCH = "_newllm_nbval_scratch"


def pytest_configure(config):
    if not os.environ.get("NEWLLM_RESULTS_DIR"):
        scratch = tempfile.mkdtemp(prefix="newllm-nbval-")
        os.environ["NEWLLM_RESULTS_DIR"] = scratch
        setattr(config, _SCRATCH, scratch)


def pytest_unconfigure(config):
    scratch = getattr(config, _SCRATCH, None)
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)
        os.environ.pop("NEWLLM_RESULTS_DIR", None)
