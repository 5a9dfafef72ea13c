"""Section 2: every selector's time per candidate batch, as a fraction of a training step.

Selection includes the inference forward its view runs; the step is a forward, backward and
SGD step of the same model on the whole batch. Selection pays off when it costs less than the
share of the step it removes. The selectors that read the learner's outputs (losses, logits)
are also set against one inference forward of the batch (the view's own, timed alone), with the
number of forwards their selection ran."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bench.inputs import (
    auto_solver,
    data_and_model,
    realistic_features,
    run_config,
    run_context,
    select_once,
    synthetic_config,
    train_step_fn,
    unseeded_context,
)
from bench.settings import Log, Settings
from bench.tables import ms, table
from bench.timing import interleaved, summary
from saln_exp.features import FeatureStore, build_backbone, embed
from saln_exp.optim import build_optimizer
from saln_exp.selectors import (
    Batch,
    BatchView,
    RunContext,
    Selector,
    ViewSources,
    build_selector,
)

KEY = "selector_overhead"
BACKBONE_LABEL = "saln (pretrained, no cache)"


@dataclass
class SelectorVariant:
    label: str
    name: str
    overrides: list[str] = field(default_factory=list)
    # what the view reads besides the learner: none | reference (precomputed reference losses) |
    # features_cached (a FeatureStore) | features_backbone (the frozen backbone on every batch)
    sources: str = "none"
    loss_based: bool = False  # selects from the learner's outputs: one inference forward


SELECTOR_VARIANTS = [
    SelectorVariant("none", "none"),
    SelectorVariant("uniform", "uniform"),
    SelectorVariant("saln (pixels)", "saln", ["selector.features=pixels"]),
    SelectorVariant("saln (learner)", "saln", ["selector.features=learner"]),
    SelectorVariant(
        "saln (pretrained, cached)", "saln", ["selector.features=pretrained"], "features_cached"
    ),
    SelectorVariant(BACKBONE_LABEL, "saln", ["selector.features=pretrained"], "features_backbone"),
    SelectorVariant("jest", "jest", sources="reference", loss_based=True),
    SelectorVariant("rho", "rho", sources="reference", loss_based=True),
    SelectorVariant("accuracy", "accuracy", loss_based=True),
    SelectorVariant("accuracy_epoch", "accuracy_epoch"),
    SelectorVariant("soft_accuracy", "soft_accuracy", loss_based=True),
    SelectorVariant("hard_accuracy_topk", "hard_accuracy_topk", loss_based=True),
    SelectorVariant("topk_loss", "topk_loss", loss_based=True),
    SelectorVariant("topq_loss", "topq_loss", loss_based=True),
    SelectorVariant("loss_weighted", "loss_weighted", loss_based=True),
    SelectorVariant("loss_qsplit", "loss_qsplit", loss_based=True),
]


def selector_configs(workdir: Path, solver: str) -> dict[str, Any]:
    """Each variant's selector config as `selector=<name> <overrides>` composes it. Variants whose
    sources are given here skip `prepare`, so they get the solver prepare would pick."""
    configs = {}
    for v in SELECTOR_VARIANTS:
        given = [f"selector.solver={solver}"] if v.sources.startswith("features") else []
        configs[v.label] = run_config(workdir, f"selector={v.name}", *v.overrides, *given).selector
    return configs


def backbone_lookup(
    images: Tensor, backbone: str, size: int, device: torch.device
) -> Callable[[Tensor], Tensor]:
    """Pretrained features without the cache: the frozen backbone on every batch (random weights;
    the cost is the same), preprocessed as the cached features are."""
    net = build_backbone(backbone, None, False).to(device)
    return lambda index: embed(net, images[index], size)


def precomputed_sources(ctx: RunContext) -> dict[str, ViewSources]:
    """Reference losses and cached features made up in place of training a reference model or
    running a backbone: this section times the selection, not its one-off preparation."""
    n_rows = len(ctx.data.noisy)
    g = torch.Generator().manual_seed(7)
    reference = (3 * torch.rand(n_rows, generator=g)).to(ctx.device)
    cached = FeatureStore(realistic_features(n_rows, 2048, False, seed=11).to(ctx.device))
    return {
        "reference": ViewSources(reference_losses=lambda batch: reference[batch.index]),
        "features_cached": ViewSources(pretrained_features=cached),
    }


def built_selectors(
    st: Settings, configs: dict[str, Any], ctx: RunContext, with_backbone: bool
) -> dict[str, tuple[Selector, ViewSources]]:
    """Every variant's selector and the sources its views read, prepared as a run prepares them
    where that is cheap (and with `precomputed_sources` where it is not)."""
    precomputed = precomputed_sources(ctx)
    selectors = {}
    for variant in SELECTOR_VARIANTS:
        if variant.sources == "features_backbone" and not with_backbone:
            continue
        selector = build_selector(configs[variant.label], 0)
        if variant.sources == "none":
            sources = selector.prepare(ctx)  # nothing to build for these
        elif variant.sources == "features_backbone":
            images = ctx.data.train.images
            lookup = backbone_lookup(images, st.backbone, st.backbone_size, ctx.device)
            sources = ViewSources(pretrained_features=lookup)
        else:
            sources = precomputed[variant.sources]
        selectors[variant.label] = (selector, sources)
    return selectors


def candidate_batch(ctx: RunContext, n: int) -> Batch:
    """The first n training images through the training pipeline, as a run's first batch."""
    data = ctx.data
    pos = torch.arange(n, device=ctx.device)
    return Batch(
        data.train.indices[pos],
        data.pipeline(data.train.images[pos], train=True),
        data.train.targets[pos],
    )


def measure(st: Settings, device: torch.device, workdir: Path, log: Log) -> list[dict[str, Any]]:
    n = st.selector_batch
    configs = selector_configs(workdir, auto_solver(unseeded_context(workdir, device)))
    rows = []
    backbone_times: list[float] | None = None
    for model_name, like in st.selector_models:
        cfg = synthetic_config(workdir, model_name, like, n, 2 * n)
        data, model = data_and_model(cfg, device)
        optimizer = build_optimizer(cfg.optimizer, model.parameters())
        ctx = run_context(cfg, data, model, device)
        batch = candidate_batch(ctx, n)
        # the backbone's cost does not depend on the learner: measured once, with the first model
        selectors = built_selectors(st, configs, ctx, with_backbone=backbone_times is None)
        variants: dict[str, Callable[[], Any]] = {
            "__step__": train_step_fn(model, optimizer, batch.x, batch.y),
            # the inference forward a view runs for the learner's outputs, alone
            "__forward__": partial(lambda b, m: BatchView(b, m).logits, batch, model),
        }
        for label, (selector, sources) in selectors.items():
            if label != BACKBONE_LABEL:
                variants[label] = partial(select_once, selector, batch, model, sources)
        rounds = st.selector_rounds.get(model_name, 2)
        # warm up the step and one forward (they build the kernels every selector reuses)
        times = interleaved(variants, rounds, device, warmup=["__step__", "topk_loss"])
        if BACKBONE_LABEL in selectors:
            selector, sources = selectors[BACKBONE_LABEL]
            once = partial(select_once, selector, batch, model, sources)
            backbone_times = interleaved({"b": once}, st.backbone_rounds, device, warmup=False)["b"]
        step_ms = summary(times["__step__"], 1e3)
        forward_ms = summary(times["__forward__"], 1e3)
        for variant in SELECTOR_VARIANTS:
            label = variant.label
            forwards = None
            if label == BACKBONE_LABEL:
                samples = backbone_times or []
                kept = build_selector(configs[label], 0).keep_count(n) / n
            else:
                samples = times[label]
                selector, sources = selectors[label]
                view = BatchView(batch, model, sources)
                kept = len(selector.select(batch, view).positions) / n
                forwards = view.computed.get("logits", 0)
            row = {"model": model_name, "data": f"{like}-shaped", "B": n, "selector": label}
            rows.append(row | cost(summary(samples, 1e3), step_ms, kept))
            if variant.loss_based:
                rows[-1] |= {
                    "loss_based": True,
                    "forward_ms": forward_ms,
                    "forwards": forwards,
                    "select_vs_forward": rows[-1]["select_ms"]["median"] / forward_ms["median"],
                }
            if label == BACKBONE_LABEL:
                rows[-1]["note"] = f"{st.backbone} at {st.backbone_size}px, measured once"
        log(f"  selectors on {model_name}: step {step_ms['median']:.1f} ms")
    return rows


def cost(select_ms: dict, step_ms: dict, kept: float) -> dict[str, Any]:
    """Selection time against the step, and whether the kept share makes it worth it."""
    fraction = select_ms["median"] / step_ms["median"]
    return {
        "select_ms": select_ms,
        "step_ms": step_ms,
        "fraction_of_step": fraction,
        "kept_fraction": kept,
        # step cost taken as proportional to batch size: selection pays when it costs less than
        # the share of the step it removes
        "pays_off": bool(fraction < 1.0 - kept) if kept < 1.0 else None,
        "note": "",
    }


def markdown(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "",
        "## 2. Selection cost per candidate batch, as a fraction of a training step",
        "",
        "`selector.select(batch, BatchView(...))` including the view's inference forward, vs one "
        "training step (forward, backward, SGD step) on the whole batch. JEST and RHO read "
        "precomputed reference losses. *pays off*: select/step < 1 - kept (step cost taken as "
        "proportional to batch size). For the selectors that read the learner's outputs: "
        "*forwards*, the inference forwards their selection ran, and *select / forward*, their "
        "time over one inference forward of the batch timed alone.",
        "",
    ]
    header = [
        "model",
        "data",
        "B",
        "step ms",
        "selector",
        "select ms",
        "select / step",
        "kept",
        "pays off",
        "forwards",
        "select / forward",
        "note",
    ]
    cells = [
        [
            r["model"],
            r["data"],
            r["B"],
            ms(r["step_ms"]),
            r["selector"],
            ms(r["select_ms"]),
            f"{r['fraction_of_step']:.3f}",
            f"{r['kept_fraction']:.2f}",
            "-" if r["pays_off"] is None else ("yes" if r["pays_off"] else "no"),
            r.get("forwards", "-"),
            f"{r['select_vs_forward']:.2f}" if "select_vs_forward" in r else "-",
            r["note"],
        ]
        for r in rows
    ]
    return lines + table(header, cells)
