"""EdMIPS (Cai & Vasconcelos, CVPR 2020): the shared differentiable search with plain SGD.

``edmips`` searches on the proxy and transfers the policy (the naive proxy baseline);
``edmips-target`` searches directly on the target data — the conventional, expensive reference.
"""

from mpqbench.search import register_method
from mpqbench.search.differentiable import DifferentiableSearch


@register_method("edmips")
class EdMIPS(DifferentiableSearch):
    """Single-level joint SGD on weights and α with the complexity term; argmax policy."""


@register_method("edmips-target")
class EdMIPSTarget(DifferentiableSearch):
    """EdMIPS searched on the target dataset itself (pass the target as ``--proxy``)."""

    searches_on_target = True
