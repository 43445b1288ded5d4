import time, jax, jax.numpy as jnp
for c, s in ((96, 24), (384, 6)):
    x = jnp.ones((64, s, s, c)); k = jnp.ones((3, 3, 1, c))
    f = lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c).sum()
    for name, fn in (("fwd", jax.jit(f)), ("fwd+bwd", jax.jit(jax.grad(f, argnums=(0, 1))))):
        r = fn(x, k); jax.block_until_ready(r); t = time.perf_counter()
        for _ in range(20): r = fn(x, k)
        jax.block_until_ready(r); print(f"depthwise {c}ch {s}px {name}: {(time.perf_counter() - t) / 20 * 1000:.2f} ms", flush=True)
