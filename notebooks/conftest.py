"""``pytest --nbval-lax notebooks/``: the notebooks' runs go to a scratch folder, never into the repo's results/.

The kernels nbval starts inherit this process's environment, and the notebooks' results-folder helper
(newllm.notebook.parameters.find_results_dir) honours NEWLLM_RESULTS_DIR. A folder already set is kept.
Progress bars are throttled in those kernels (TQDM_MININTERVAL), see pytest_configure.
"""

import os
import shutil
import tempfile

_SCRATCH = "_newllm_nbval_scratch"


def pytest_configure(config):
    # nbval collects a cell's output messages after the cell finishes, waiting at most 5 s for each; a long cell
    # redrawing progress bars many times a second can overflow the kernel's output queue and lose its final
    # message. tqdm reads TQDM_* defaults from the environment: redraw at most every 10 s under test.
    os.environ.setdefault("TQDM_MININTERVAL", "10")
    if not os.environ.get("NEWLLM_RESULTS_DIR"):
        scratch = tempfile.mkdtemp(prefix="newllm-nbval-")
        os.environ["NEWLLM_RESULTS_DIR"] = scratch
        setattr(config, _SCRATCH, scratch)


def pytest_unconfigure(config):
    scratch = getattr(config, _SCRATCH, None)
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)
        os.environ.pop("NEWLLM_RESULTS_DIR", None)
