"""Shared fixtures: a small corpus, a prepared token cache and tiny configs, all on CPU."""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from gptmini.core.model import ModelConfig
    from gptmini.train.datamodule import GPTMiniData


def pytest_configure(config):
    # Each process that runs tests imports torch and Lightning here, before collection, as a gptmini
    # program does (gptmini.core.startup): with the collector paused, then frozen (~2 s of CPU less).
    # Not the xdist controller: it runs no test, and its import (~3 s) came before any worker started.
    if getattr(config.option, "dist", "no") != "no" and not hasattr(config, "workerinput"):
        return
    from gptmini.core.startup import collector_paused, freeze_imported

    with collector_paused():
        import lightning.pytorch  # noqa: F401

        import gptmini.cli  # noqa: F401
        import gptmini.tools.curves  # noqa: F401
    freeze_imported()


# Small enough that tokenizer training + encoding take about a second.
CORPUS_CHARS = 120_000
TINY_VOCAB = 384
TINY_BLOCK = 32
# TINY_LR: the peak lr that suits the tests' width (tiny_cli_args and shipped_args give it). tiny.yaml's
# 2e-3 is chosen for 128 wide; a 4x narrower model takes ~4x the step (lr ~ 1/width, as the CPU smoke's
# shape does). At 2e-3 the one-batch overfit check every test fit runs at step 0 takes ~120 of its
# 276-step budget, at 1e-2 ~35: about 0.3 s less CPU per fit, over a hundred fits in the suite.
TINY_LR = 1e-2
# The tests' model on the command line (tiny_model_cfg is the same in Python): 2 layers x 32 wide on
# 384 tokens x 32 positions.
TINY_SHAPE = [
    "--model.arch.n_layer=2",
    "--model.arch.n_head=2",
    "--model.arch.n_embd=32",
    f"--data.vocab_size={TINY_VOCAB}",
    f"--data.block_size={TINY_BLOCK}",
]


# Tests sharing an expensive fixture (a training run, a wheel) run on one pytest-xdist worker
# (``--dist loadgroup``), so it is built once per session (or module), not once per worker; without
# xdist the mark is inert. Name -> its scope; a module fixture groups only its own module's tests.
SHARED_FIXTURES = {
    "ddp_reference": "session",
    "fitted_run": "session",
    "reference": "module",  # tests/train/test_resume.py, tests/callbacks/test_stops.py
    "base": "module",  # tests/train/test_resume_settings.py
    "run_ckpt": "module",  # tests/core/test_formats.py
    "trained_run": "module",  # tests/commands/test_generate.py
    "one_process_reference": "module",  # tests/cross_cutting/test_cluster.py
    "pd_english": "module",  # tests/callbacks/test_first_batch.py
    "unicode_corpus": "module",  # tests/cross_cutting/test_bpb.py
    "wheel": "module",  # tests/cross_cutting/test_packaging.py
}


# tryfirst: pytest-xdist reads the marks in its own collection hook (suffixing the node ids with
# the group); a mark added after it is silently ignored and the fixture is built on both workers.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        shared = [f for f in SHARED_FIXTURES if f in getattr(item, "fixturenames", ())]
        if shared:
            name = shared[0]
            group = name if SHARED_FIXTURES[name] == "session" else f"{item.module.__name__}::{name}"
            item.add_marker(pytest.mark.xdist_group(group))
    # xdist hands out the shared groups first (largest first), then single tests in this order: the
    # slow ones first, so that no long test starts last while the other worker sits idle.
    items.sort(key=lambda item: "slow" not in item.keywords)
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _threads():
    # The test models are tiny: a second thread costs more in synchronisation than it gains, and
    # on a busy 2-core machine it makes steps 10-40x slower.
    import torch

    torch.set_num_threads(1)


def attribute_docstrings_off():
    """Skip jsonargparse's attribute-docstring parsing (help text only): ~1.5 s less per CLI start."""
    from gptmini.train import compat

    return compat.attribute_docstrings_off()


@pytest.fixture
def no_attribute_docstrings():
    with attribute_docstrings_off():
        yield


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    """The first CORPUS_CHARS of the embedded corpus as a plain .txt file."""
    from gptmini.core.sources import default_corpus

    with gzip.open(default_corpus(), "rt", encoding="utf-8") as f:
        text = f.read(CORPUS_CHARS)
    path = tmp_path_factory.mktemp("corpus") / "plays.txt"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory, corpus_file) -> Path:
    """A cache folder already holding the prepared tiny corpus (tokenizer + token files)."""
    from gptmini.train.datamodule import GPTMiniData

    cache = tmp_path_factory.mktemp("cache")
    GPTMiniData(
        data=str(corpus_file), cache_dir=str(cache), vocab_size=TINY_VOCAB, block_size=TINY_BLOCK
    ).prepare_data()
    return cache


@pytest.fixture
def tiny_data(corpus_file, data_cache) -> GPTMiniData:
    from gptmini.train.datamodule import GPTMiniData

    dm = GPTMiniData(
        data=str(corpus_file),
        cache_dir=str(data_cache),
        vocab_size=TINY_VOCAB,
        block_size=TINY_BLOCK,
        batch_size=8,
    )
    dm.prepare_data()
    return dm


@pytest.fixture
def tiny_model_cfg() -> ModelConfig:
    from gptmini.core.model import ModelConfig

    return ModelConfig(vocab_size=TINY_VOCAB, block_size=TINY_BLOCK, n_layer=2, n_head=2, n_embd=32)


def tiny_cli_args(
    tmp_path: Path, corpus_file: Path, data_cache: Path, max_steps: int = 30, lr: float | None = TINY_LR
) -> list[str]:
    """Arguments for `gptmini.cli fit` on the tiny setup, writing everything under tmp_path. ``lr``
    None: tiny.yaml's (a test that resumes a checkpoint trained at it, or compares the given values)."""
    return [
        "fit",
        "--config",
        str(Path(__file__).parent.parent / "configs" / "tiny.yaml"),
        f"--trainer.max_steps={max_steps}",
        f"--trainer.val_check_interval={max(1, max_steps // 2)}",
        "--trainer.limit_val_batches=4",
        "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
        *TINY_SHAPE,
        *([f"--model.optim.lr={lr}"] if lr is not None else []),
        "--model.schedule.warmup_steps=3",
        f"--data.data={corpus_file}",
        f"--data.cache_dir={data_cache}",
        "--data.batch_size=8",
    ]


@pytest.fixture
def cli_args(tmp_path, corpus_file, data_cache):
    """Factory: cli_args(max_steps=30) -> argument list for a tiny CLI fit in tmp_path."""

    def make(max_steps: int = 30, lr: float | None = TINY_LR) -> list[str]:
        return tiny_cli_args(tmp_path, corpus_file, data_cache, max_steps, lr)

    return make


def cli_env() -> dict[str, str]:
    """Environment for a CLI subprocess: this checkout and tests/ (for test-only callbacks) first."""
    tests = Path(__file__).parent
    folders = [tests, *sorted(p for p in tests.iterdir() if p.is_dir() and p.name not in ("fixtures", "__pycache__"))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join([*map(str, folders), str(tests.parent)]), "OMP_NUM_THREADS": "1"}


def callbacks_args(root: Path, callbacks: list[dict]) -> list[str]:
    """CLI args that replace trainer.callbacks (lists do not merge across config files)."""
    import yaml

    root.mkdir(parents=True, exist_ok=True)
    extra = root / "callbacks.yaml"
    extra.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks}}))
    return ["--config", str(extra)]


def scalars_by_step(run_dir: Path) -> dict[str, dict[int, float]]:
    """Every scalar a run's event files hold, as tag -> {step: value}."""
    from gptmini.tools.curves import read_scalars

    return {tag: dict(zip(steps, values)) for tag, (steps, values) in read_scalars(run_dir).items()}


@pytest.fixture(scope="session")
def fitted_run(tmp_path_factory, corpus_file, data_cache) -> Path:
    """A 6-step tiny CLI fit (validation at steps 3 and 6; last.ckpt and best-step=N.ckpt only, no
    step-0 checks); returns its log folder. For eval and export."""
    import json

    from gptmini.cli import make_cli

    tmp = tmp_path_factory.mktemp("evalrun")
    callbacks = [  # not tiny.yaml's step-0 checks: only what eval and export read
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": True}},
        {"class_path": "gptmini.callbacks.best.BestCheckpoint"},
    ]
    args = tiny_cli_args(tmp, corpus_file, data_cache, max_steps=6) + [f"--trainer.callbacks={json.dumps(callbacks)}"]
    cli = make_cli(args)
    return Path(cli.trainer.logger.log_dir)


def fit_cli(args: list[str], *callbacks):
    """Build trainer, module and data from `fit` arguments as the CLI does, and fit with ``callbacks`` added."""
    from gptmini.cli import make_cli

    cli = make_cli(args=[a for a in args if a != "fit"], run=False)
    cli.trainer.callbacks.extend(callbacks)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return cli


@pytest.fixture(scope="session")
def ddp_reference(tmp_path_factory, corpus_file, data_cache) -> dict:
    """The multi-process tests' shared reference run, once per session (tests/shipped_runs.py)."""
    from shipped_runs import reference_run

    return reference_run(tmp_path_factory.mktemp("ddp"), corpus_file, data_cache)
