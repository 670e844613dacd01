"""Training methods: each one module behind one interface (`Method`), in one registry.

    from ssl_jax import methods
    methods.names()             # ('ours', 'npid', 'simclr', 'byol', 'supervised')
    methods.get("simclr")       # its Method: step, views, bank, heads, state
    methods.register(Method(name="mine", summary=..., make_step=...))

`config.method` selects one by name; nothing outside this package names a
method. README.md, "Add a method", shows a new one end to end.
"""

from ssl_jax.methods import bank
from ssl_jax.methods import byol
from ssl_jax.methods import simclr
from ssl_jax.methods import supervised
from ssl_jax.methods.base import Method
from ssl_jax.methods.base import get
from ssl_jax.methods.base import names
from ssl_jax.methods.base import register
from ssl_jax.methods.base import unregister

for _method in (bank.OURS, bank.NPID, simclr.SIMCLR, byol.BYOL, supervised.SUPERVISED):
  register(_method)

__all__ = ["Method", "get", "names", "register", "unregister"]
