"""The honest control: a uniformly random subset of the size the selector under test keeps."""

from saln_exp.selectors.base import Batch, BatchView, Selector


class Uniform(Selector):
    name = "uniform"
    style = ("#999999", "s")  # colour and marker in every figure (report/style.py)

    def choose(self, batch: Batch, view: BatchView):
        return self.uniform(len(batch), self.keep_count(len(batch))), {}
