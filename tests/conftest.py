"""Test configuration: float64 on (torch parity in double), one CPU device."""

import jax

jax.config.update("jax_enable_x64", True)
