"""The default config (scikit-learn's bundled digits, tiny CNN, short proxy run).

It lives in the package (proxy_jax/config/defaults.py) so an installed proxy_jax has it; this file
keeps `--config=configs/default.py` and `from configs import default` working.
"""

from proxy_jax.config.defaults import get_config  # noqa: F401 (this file is its re-export)
