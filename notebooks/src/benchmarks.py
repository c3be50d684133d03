# %% [markdown]
# # Benchmarks
#
# `benchmarks/step_time.py` times one optimizer step (median ms) of this library
# (functional under `jax.jit` with donation, and the facade), torch fused / foreach
# and optax, and writes a bar chart. This notebook runs it with its quickest
# settings (one 16.8M-parameter leaf, SGD with momentum and Adam, 3 timed steps) so
# it finishes in CI; see the README for the full tables and the command for them.
# The machine's load changes the numbers: compare columns of one run, not runs.

# %%
import os
import subprocess
import sys
import tempfile

from IPython.display import Image, display

root = os.path.abspath("..")
png = os.path.join(tempfile.mkdtemp(), "step_time.png")
run = subprocess.run(
    [
        sys.executable,
        os.path.join(root, "benchmarks", "step_time.py"),
        "--pytrees",
        "1x16.8M",
        "--optimizers",
        "sgd_momentum",
        "adam",
        "--repeats",
        "3",
        "--png",
        png,
    ],
    capture_output=True,
    text=True,
    cwd=root,
    timeout=600,
)
print(run.stdout[-4000:])
if run.returncode != 0:
    raise RuntimeError(run.stderr[-4000:])

# %%
display(Image(filename=png))

# %% [markdown]
# ## Reading the table
# * `fo jit`: `fo.adam(...)` under `jax.jit` with params and state donated;
#   `fo facade`: `fo.Adam(params).step(grads)`.
# * The ratios compare against torch's fused kernels and against optax.
# * `compile s` is the first step's compile time; `step MB` the memory of one
#   compiled step next to the floor params + state + one gradient.
