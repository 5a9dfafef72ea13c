"""Selective-Backprop (Jiang et al. 2019) as its authors' code runs it: the oracle for the
selective_backprop selector and for the staging of its selected samples.

Transcribed from github.com/angelajiang/SelectiveBackprop at commit
7c419379c45a8d55e447dd81a57c1f37a39dcb27, in the order the code runs:

- `lib/hist.py::UnboundedHistogram`: a deque of the last `max_history` losses;
  `percentile_of_score` counts the losses strictly below the score (`if i < score`).
- `lib/calculators.py::BatchedRelativeProbabilityCalculator.get_probability`: the whole forward
  batch's losses join the history first (`update_history(losses)`), then each loss gets
  `max(sampling_min, math.pow(percentile / 100., beta))`.
- `lib/selectors.py::SamplingSelector.select`: kept when `np.random.uniform(0, 1) < probability`.
- `lib/selectors.py::PrimedSelector`: `BaselineSelector` (everything kept, the calculator not
  called) while `num_trained < num_images_to_prime`; `SelectiveBackpropper` sets
  `num_images_to_prime = num_training_images` and adds `num_training_images` to `num_trained`
  after every epoch (`next_partition`), so the first epoch trains on everything.
- `lib/trainer.py::Trainer.get_batch` / `MemoizedTrainer.train_batch`: every forward batch is
  appended to `backprop_queue` (which lives across epochs); a backward batch is the queue's
  shortest prefix holding `batch_size` selected samples; only at the loader's last batch
  (`final`) and only when no such prefix exists, the queue is flushed whole if it holds any
  selected sample.

Deliberately naive (lists, loops), sharing no code with saln_exp.
"""

from __future__ import annotations

import collections
import math


class UnboundedHistogram:
    """lib/hist.py::UnboundedHistogram."""

    def __init__(self, max_history):
        self.history = collections.deque(maxlen=max_history)

    def append(self, value):
        self.history.append(value)

    def percentile_of_score(self, score):
        num_lower_scores = 0
        for i in self.history:
            if i < score:
                num_lower_scores += 1
        return num_lower_scores * 100.0 / len(self.history)


class RelativeProbabilityCalculator:
    """lib/calculators.py::BatchedRelativeProbabilityCalculator."""

    def __init__(self, sampling_min, history_length, beta):
        self.historical_losses = UnboundedHistogram(history_length)
        self.sampling_min = sampling_min
        self.beta = beta

    def get_probability(self, losses):
        for loss in losses:  # update_history: the whole batch first
            self.historical_losses.append(loss)
        probs = []
        for loss in losses:
            percentile = self.historical_losses.percentile_of_score(loss)
            probs.append(max(self.sampling_min, math.pow(percentile / 100.0, self.beta)))
        return probs


def primed(epoch, n_train, num_images_to_prime):
    """lib/selectors.py::PrimedSelector.get_selector: the baseline (keep all) while
    num_trained < num_images_to_prime, num_trained growing by one training set per epoch
    (`next_partition(num_training_images)` after each epoch; `epoch` counts from 0)."""
    num_trained = epoch * n_train
    return num_trained < num_images_to_prime


def get_batch(queue, batch_size, final):
    """lib/trainer.py::Trainer.get_batch on a queue of (sample, selected) pairs: (the selected
    samples of the backward batch or None, the queue that remains)."""
    num_images_to_backprop = 0
    for index, (_, select) in enumerate(queue):
        num_images_to_backprop += int(select)
        if num_images_to_backprop == batch_size:
            backprop_batch = queue[: index + 1]
            return [s for s, sel in backprop_batch if sel], queue[index + 1 :]
    if final:
        if sum(1 for _, sel in queue if sel) == 0:
            return None, []
        return [s for s, sel in queue if sel], []
    return None, queue


def backward_batches(epochs, batch_size):
    """Trainer.train over several epochs. `epochs`: per epoch, its forward batches, each a list
    of (sample, selected) pairs. Returns [(epoch, the samples of one backward pass)] and the
    queue left after the last epoch."""
    queue, out = [], []
    for epoch, batches in enumerate(epochs):
        for i, batch in enumerate(batches):
            queue = queue + list(batch)  # self.backprop_queue += annotated_forward_batch
            chosen, queue = get_batch(queue, batch_size, final=i == len(batches) - 1)
            if chosen:
                out.append((epoch, chosen))
    return out, queue
