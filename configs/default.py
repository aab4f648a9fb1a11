"""The default config (scikit-learn's bundled digits, tiny CNN, short proxy run).

It lives in the package (proxy_jax/default_config.py) so an installed proxy_jax has it; this file
keeps `--config=configs/default.py` and `from configs import default` working.
"""

from proxy_jax.default_config import get_config  # pylint: disable=unused-import
