"""What every section measures, at the default size and at the smoke-test size (`--quick`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

Log = Callable[[str], None]  # where sections report progress (print, or a test's sink)


@dataclass
class RunnerCase:
    label: str
    model: str
    like: str  # synthetic stand-in of this dataset's shape
    batch: int
    images: int
    augment: bool
    rounds: int


@dataclass
class EpochCase:
    label: str  # the thesis' row names for ASSIST's filterings: none, batchwise
    # (selector=accuracy), epochwise (accuracy_epoch), epoch + batch
    overrides: tuple[str, ...]
    epochs: int
    reuse_off: bool = False  # also run without the shared computations, and compare the metrics
    bare: bool = False  # also time the bare training and inference loops on the same data


FCNET_4_5 = ("experiment=assist_4_5",)  # ASSIST Table 4.5's recipe (500 epochs in the paper)
LENET_4_4 = ("experiment=assist_4_4", "model=lenet")  # Table 4.4's LeNet rows (300 epochs)
RECIPE_EPOCHS = {"FCNet": 500, "LeNet": 300}


@dataclass
class Settings:
    # 1. SALN vs Algorithm 1
    saln_sizes: tuple[int, ...] = (128, 256, 512, 1024)
    saln_widths: tuple[int, ...] = (512, 2048)
    saln_signed: tuple[int, int] = (1024, 512)  # one signed-feature case (B, d)
    saln_rounds: int = 7  # distinct seeded batches per case, each timed once per method
    saln_other_widths: tuple[int, ...] = (512,)  # also time the solver `auto` does not pick here
    saln_warm: bool = True  # time each call right after an untimed one: steady state, warm threads
    # 2. selector cost per candidate batch
    selector_batch: int = 64
    selector_models: tuple[tuple[str, str], ...] = (
        ("lenet", "mnist"),
        ("fcnet", "mnist"),
        ("resnet18", "cifar10"),
    )
    selector_rounds: dict[str, int] = field(
        default_factory=lambda: {"lenet": 5, "fcnet": 5, "resnet18": 2}
    )
    backbone: str = "resnet50"
    backbone_size: int = 224
    backbone_rounds: int = 1
    # 3. runner vs the bare loop and a plain loop (the targets are ratios near 1, so LeNet's
    # cheap epochs get more rounds; ResNet-18 steps take ~1 s on 2 cores: short epochs)
    runner_cases: tuple[RunnerCase, ...] = (
        RunnerCase(
            "LeNet, MNIST-shaped", "lenet", "mnist", 128, images=2048, augment=False, rounds=8
        ),
        RunnerCase(
            "LeNet, CIFAR-shaped + aug",
            "lenet",
            "cifar10",
            128,
            images=1024,
            augment=True,
            rounds=5,
        ),
        RunnerCase(
            "ResNet-18, CIFAR-shaped", "resnet18", "cifar10", 32, images=64, augment=False, rounds=4
        ),
        RunnerCase(
            "ResNet-18, CIFAR-shaped + aug",
            "resnet18",
            "cifar10",
            32,
            images=64,
            augment=True,
            rounds=4,
        ),
    )
    plain_workers: tuple[int, ...] = (0, 2)
    # 4. peak memory
    memory_default_args: tuple[str, ...] = ()
    memory_cifar_args: tuple[str, ...] = (
        "dataset=synthetic",
        "dataset.like=cifar10",
        "model=resnet18",
        "dataset.n_train=512",
        "dataset.n_test=256",
        "dataset.batch_size=128",
        "trainer.epochs=1",
        "eval.batch_size=256",
    )
    # 5. selective backward
    selective_cases: tuple[tuple[str, str, int], ...] = (
        ("lenet", "mnist", 256),
        ("resnet18", "cifar10", 32),
    )
    selective_ratios: tuple[float, ...] = (0.5, 0.8)
    selective_rounds: dict[str, int] = field(default_factory=lambda: {"lenet": 5, "resnet18": 3})
    # 6. epoch time of the ASSIST MNIST recipes on the real MNIST (cases below)
    # 7. a folder in memory vs streamed from its files
    streaming_images: int = 4000
    streaming_side: int = 96
    streaming_workers: tuple[int, ...] = (0, 2)
    # 8. bf16 autocast and channels_last on a training step
    precision_model: str = "resnet18"
    precision_batch: int = 128
    precision_rounds: int = 5
    # 9. start-up time of saln-train
    startup_rounds: int = 3
    epoch_cases: tuple[EpochCase, ...] = (
        EpochCase(
            "FCNet100, none", (*FCNET_4_5, "model.hidden=100", "selector=none"), 4, True, True
        ),
        EpochCase(
            "FCNet100, batchwise", (*FCNET_4_5, "model.hidden=100", "selector=accuracy"), 4, True
        ),
        EpochCase("FCNet1000, none", (*FCNET_4_5, "model.hidden=1000", "selector=none"), 3),
        EpochCase(
            "FCNet1000, batchwise", (*FCNET_4_5, "model.hidden=1000", "selector=accuracy"), 3
        ),
        EpochCase("FCNet3000, none", (*FCNET_4_5, "model.hidden=3000", "selector=none"), 3),
        EpochCase(
            "FCNet3000, batchwise", (*FCNET_4_5, "model.hidden=3000", "selector=accuracy"), 3
        ),
        EpochCase("LeNet, none", (*LENET_4_4, "selector=none"), 3, True, True),
        EpochCase("LeNet, batchwise", (*LENET_4_4, "selector=accuracy"), 3),
        EpochCase("LeNet, epochwise", (*LENET_4_4, "selector=accuracy_epoch"), 3, True),
        EpochCase("LeNet, epoch + batch", (*LENET_4_4, "selector=accuracy_epoch_batch"), 3),
    )
    bare_rounds: int = 2  # timed bare epochs per case (after an untimed one)


def quick_settings() -> Settings:
    """Tiny sizes: every section runs and every file is written, in well under a minute."""
    return Settings(
        saln_sizes=(64, 256),
        saln_widths=(512,),
        saln_signed=(128, 64),
        saln_rounds=2,
        saln_other_widths=(),
        selector_batch=16,
        selector_models=(("lenet", "mnist"),),
        selector_rounds={"lenet": 1},
        backbone="resnet18",
        backbone_size=32,
        backbone_rounds=1,
        runner_cases=(
            RunnerCase(
                "LeNet, MNIST-shaped",
                "lenet",
                "mnist",
                batch=32,
                images=128,
                augment=False,
                rounds=1,
            ),
            RunnerCase(
                "LeNet, CIFAR-shaped + aug",
                "lenet",
                "cifar10",
                batch=16,
                images=32,
                augment=True,
                rounds=1,
            ),
        ),
        plain_workers=(0,),
        memory_default_args=("trainer.epochs=1",),
        memory_cifar_args=(
            "dataset=synthetic",
            "dataset.like=cifar10",
            "model=resnet18",
            "dataset.n_train=32",
            "dataset.n_test=16",
            "dataset.batch_size=16",
            "trainer.epochs=1",
            "eval.batch_size=32",
        ),
        selective_cases=(("lenet", "mnist", 32),),
        selective_ratios=(0.5,),
        selective_rounds={"lenet": 2},
        epoch_cases=(
            EpochCase(
                "FCNet100, none", (*FCNET_4_5, "model.hidden=100", "selector=none"), 2, True, True
            ),
        ),
        bare_rounds=1,
        streaming_images=60,
        streaming_side=16,
        streaming_workers=(0,),
        precision_model="lenet",
        precision_batch=16,
        precision_rounds=1,
        startup_rounds=1,
    )


GPU_SECTIONS = ("saln", "runner", "precision", "epochs")


def gpu_settings(quick: bool = False) -> Settings:
    """`saln-bench --gpu` (`make bench-gpu`): what a GPU changes, sized to finish in under 8 minutes
    on one: the runner against the bare loop and a plain DataLoader loop with the data on the
    device (LeNet, ResNet-18 with and without augmentation, at their recipes' batch sizes), SALN's
    dense and Lanczos solves against Algorithm 1 (`GPU_SECTIONS`: saln), bf16 + channels_last on a
    ResNet-18 step, one real-MNIST LeNet epoch against the bare loops. `quick`: the same plan at
    the smoke-test sizes, which runs on a CPU in the tests."""
    if quick:
        return quick_settings()
    lenet_epoch = EpochCase("LeNet, none", (*LENET_4_4, "selector=none"), 2, bare=True)
    return Settings(
        saln_sizes=(256, 1024, 2048),
        saln_widths=(512, 2048),
        saln_signed=(1024, 512),
        saln_other_widths=(512, 2048),
        runner_cases=(
            RunnerCase("LeNet, MNIST-shaped", "lenet", "mnist", 1024, 32768, False, 3),
            RunnerCase("ResNet-18, CIFAR-shaped", "resnet18", "cifar10", 256, 8192, False, 3),
            RunnerCase("ResNet-18, CIFAR-shaped + aug", "resnet18", "cifar10", 256, 8192, True, 3),
        ),
        plain_workers=(0, 4, 8),
        precision_batch=256,
        precision_rounds=10,
        epoch_cases=(lenet_epoch,),
        bare_rounds=2,
    )
