"""Run layer: a training run: state, jitted steps, the loop, the proxy step, checkpoints, records, reporting."""
