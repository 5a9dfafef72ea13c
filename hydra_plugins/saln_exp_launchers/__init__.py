"""saln-exp's Hydra launcher plugins. Hydra only instantiates plugins that live in the
`hydra_plugins` namespace package, so they are here rather than in saln_exp/."""
