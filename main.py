"""Trains a classifier with Proxy Attention: `python main.py --config=configs/dogs.py`.

The program is proxy_jax/main.py (also `python -m proxy_jax.main` where proxy_jax is installed).
"""

from proxy_jax import main as trainer

if __name__ == "__main__":
  trainer.run()
