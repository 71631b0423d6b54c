"""The kernel fast path: bound endpoints relayed by nftables rules, their data never in Python.

:mod:`~relay.fastpath.rules` writes the rules as text and parses what ``nft``
and ``ip`` print (pure functions); :mod:`~relay.fastpath.kernel` runs the
commands, installs and removes each endpoint's rules, and credits the kernel's
counts to the core. docs/operations.md "Kernel fast path" says how to run it.
"""

from relay.fastpath.kernel import DEFAULT_MAX_ENDPOINTS, FAST_PATH_MODES, KernelFastPath

__all__ = ["DEFAULT_MAX_ENDPOINTS", "FAST_PATH_MODES", "KernelFastPath"]
