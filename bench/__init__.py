"""saln-bench: does selection cost less than it saves? Speed and memory, measured side by side.

Six measurements, each against the thing it has to beat, in one process (ratios are taken
round by round, so a noisy machine slows both sides of a ratio alike), one module each:

1. `saln_vs_paper`: SALN's selection step against the paper's Algorithm 1 as printed (same
   features, same kept set), per batch size and feature width, with the Fiedler gap that says
   whether the kept set is well defined at all.
2. `selector_cost`: every selector's time per candidate batch (including the inference forward its
   view runs) as a fraction of one training step of the model at the same batch size.
3. `runner_vs_plain`: the runner (`Trainer.train_epoch`, selector=none) against the plain PyTorch
   loop a user would write (torchvision-style Dataset + per-sample transforms + DataLoader workers).
4. `memory`: peak memory (max RSS) of real `saln-train` runs, each in its own subprocess.
5. `selective_backward`: the "no second forward" question: inference forward + training step on
   the kept samples (what the runner does) against one autograd forward over the whole batch +
   backward of the kept samples' loss.
6. `epochs`: seconds per epoch of each ASSIST MNIST recipe on the real MNIST (`make mnist`).

The benchmark lives outside the `saln_exp` package and uses its public API only; the papers'
algorithms it checks against come from `oracles`, the module the tests use too. `cli` runs the
sections and writes `bench/results.json` and `bench/results.md` (`results`), with PASS / MISS
against each target (`targets`) and the machine it ran on (`machine`). `--quick` runs tiny sizes
(used by the tests).
"""
