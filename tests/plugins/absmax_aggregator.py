"""A user's aggregator in one file: per coordinate, the member value of largest magnitude
(ties: the lower worker index). Non-linear, so every backend gathers the payloads."""
import torch

from harness.aggregators import Aggregator, register


@register("absmax")
class AbsMax(Aggregator):
    linear = False

    def combine(self, payloads):
        s = torch.stack(list(payloads))
        return s.gather(0, s.abs().argmax(0, keepdim=True)).squeeze(0)
