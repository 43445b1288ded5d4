"""Forward and forward+backward time of a raw JAX depthwise convolution (run on the lent GPU, 2026-11-26)."""

import time

import jax
import jax.numpy as jnp

for c, s in ((96, 24), (384, 6)):
    x = jnp.ones((64, s, s, c))
    k = jnp.ones((3, 3, 1, c))

    def f(x, k, c=c):
        dims = ("NHWC", "HWIO", "NHWC")
        return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=dims, feature_group_count=c).sum()

    for name, fn in (("fwd", jax.jit(f)), ("fwd+bwd", jax.jit(jax.grad(f, argnums=(0, 1))))):
        r = fn(x, k)
        jax.block_until_ready(r)
        t = time.perf_counter()
        for _ in range(20):
            r = fn(x, k)
        jax.block_until_ready(r)
        print(f"depthwise {c}ch {s}px {name}: {(time.perf_counter() - t) / 20 * 1000:.2f} ms", flush=True)
