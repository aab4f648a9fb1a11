"""Lifting a one-example function to a batch: vmap, a bounded number of examples at a time."""

import jax


def leading_size(tree) -> int:
  return jax.tree_util.tree_leaves(tree)[0].shape[0]


def map_chunked(fn, xs, chunk_size: int | None):
  """`fn` mapped over the leading axis of the pytree `xs`, vmapped `chunk_size` at a time.

  One chunk is vmapped; chunks run one after another under `lax.map` (the remainder as one
  smaller vmapped call), so memory is bounded by `chunk_size` examples and the whole thing is
  still a single traced computation.
  """
  size = leading_size(xs)
  if chunk_size is None or chunk_size >= size:
    return jax.vmap(fn)(xs)
  return jax.lax.map(fn, xs, batch_size=max(1, int(chunk_size)))
