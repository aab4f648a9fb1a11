"""proxy_jax: Proxy Attention (CAM-guided training-image replacement) in JAX/Flax."""
