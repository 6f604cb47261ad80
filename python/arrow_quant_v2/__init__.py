"""``arrow_quant_v2``: the original ArrowQuant V2 module's name, served by quantbridge.

Code written for ``pallasting/ArrowQuant_V2`` imports this and runs unchanged; everything
here is ``quantbridge.compat`` (docs/compat.md), on quantbridge's engine.
"""

from quantbridge.compat import *  # noqa: F403  (the original's public names)
from quantbridge.compat import __all__, __getattr__  # noqa: F401  (out-of-scope names explain themselves)
