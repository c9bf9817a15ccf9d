"""The rank rule of gptmini.train.ranks, held in the code: no collective inside a rank-0-only branch.

The shipped callbacks, each under two processes, run in tests/cross_cutting/test_ddp.py (the shipped configs as
shipped). What each one does per rank (the sweep of this round):

- LRCurveCheck (fit start): every rank draws the curve from its own scheduler copy and reads the run
  folder (``run_dir``, a broadcast); rank 0 writes lr_curve.png and the TensorBoard image.
- InitialLossCheck, OverfitCheck (first batch): every rank checks its own batch on the bare model
  (no DDP wrapper: no collective); rank 0 prints; loggers write on rank 0 only.
- Checklist (fit start, first batch): every rank evaluates; rank 0 prints (``say``).
- LearningRateMonitor, ThroughputLogger: log on every rank with ``rank_zero_only`` (no sync);
  ThroughputLogger counts world_size x its own tokens.
- TextSamples (validation end): rank 0 alone samples from the bare model (no collective); skipped
  under FSDP, where that forward would need every rank.
- ModelCheckpoint, BestCheckpoint: Lightning's (dirpath broadcast at setup, save with a barrier on
  every rank); BestCheckpoint prints its closing line on rank 0.
- FaultGuard: the non-finite verdict and every stop are agreed (``reduce_boolean_decision``,
  ``stop_rules``); all ranks save together; rank 0 alone runs ``scontrol requeue``.
- GPTMiniModule: ``train/loss`` synced (mean over ranks) on the written steps only; val metrics are
  torchmetrics states synced at epoch end; ``val/ppl`` sync_dist on every rank.
- cli.before_fit: rank 0 claims the version folder before the process group exists (no collective).
"""

from __future__ import annotations

import ast
from pathlib import Path

import gptmini

PACKAGE = Path(gptmini.__file__).parent
# Calls every rank must make (gptmini.train.ranks' docstring lists them).
COLLECTIVE_CALLS = {
    "broadcast",
    "barrier",
    "reduce",
    "reduce_boolean_decision",
    "all_gather",
    "all_reduce",
    "save_checkpoint",
    "run_dir",
    "any_rank",
}


def _mentions_rank_zero(node: ast.AST) -> bool:
    for n in ast.walk(node):
        if isinstance(n, ast.Attribute) and n.attr == "is_global_zero":
            return True
        if isinstance(n, ast.Compare) and any(
            isinstance(side, ast.Attribute) and side.attr in ("rank", "global_rank")
            for side in [n.left, *n.comparators]
        ):
            return True
    return False


def _negated(test: ast.AST) -> bool:
    """``not trainer.is_global_zero`` (maybe or-ed with other conditions): the body is the other ranks'."""
    if isinstance(test, ast.BoolOp):
        return any(_negated(v) for v in test.values)
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        return _mentions_rank_zero(test.operand)
    return isinstance(test, ast.Compare) and any(isinstance(op, ast.NotEq) for op in test.ops)


def _collectives(nodes: list[ast.stmt]) -> list[ast.AST]:
    found = []
    for stmt in nodes:
        for n in ast.walk(stmt):
            if isinstance(n, ast.Attribute) and n.attr == "log_dir" and "trainer" in ast.unparse(n.value):
                found.append(n)
            elif isinstance(n, ast.Call):
                name = n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", "")
                synced = any(
                    k.arg == "sync_dist" and not (isinstance(k.value, ast.Constant) and not k.value.value)
                    for k in n.keywords
                )
                if name in COLLECTIVE_CALLS or synced:
                    found.append(n)
    return found


def _rank_zero_blocks(body: list[ast.stmt]) -> list[list[ast.stmt]]:
    """Statement lists that run on rank 0 only: ``if <rank 0>:`` bodies, and what follows an
    ``if not <rank 0>: return``."""
    blocks = []
    for i, stmt in enumerate(body):
        if isinstance(stmt, ast.If) and _mentions_rank_zero(stmt.test):
            if _negated(stmt.test):
                if stmt.body and isinstance(stmt.body[-1], ast.Return):
                    blocks.append(body[i + 1 :])
                blocks += _rank_zero_blocks(stmt.orelse)
            else:
                blocks.append(stmt.body)
            continue
        for field in ("body", "orelse", "finalbody", "handlers"):
            inner = getattr(stmt, field, None)
            if isinstance(inner, list) and inner and isinstance(inner[0], (ast.stmt, ast.excepthandler)):
                blocks += _rank_zero_blocks(inner)
    return blocks


def rank_zero_collectives(source: str) -> list[str]:
    """``line: code`` of each collective inside a rank-0-only branch or ``@rank_zero_only`` function."""
    tree = ast.parse(source)
    blocks = _rank_zero_blocks(tree.body)
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and any(
            "rank_zero_only" in ast.unparse(d) for d in fn.decorator_list
        ):
            blocks.append(fn.body)
    return sorted({f"{n.lineno}: {ast.unparse(n)}" for block in blocks for n in _collectives(block)})


def test_no_collective_on_rank_zero_alone():
    bad = {
        str(path.relative_to(PACKAGE)): found
        for path in sorted(PACKAGE.rglob("*.py"))
        if (found := rank_zero_collectives(path.read_text(encoding="utf-8")))
    }
    assert len(list(PACKAGE.rglob("*.py"))) > 30  # the glob found the package
    assert bad == {}, bad


def test_the_scan_sees_this_rounds_hang_and_its_variants():
    hang = """
def check(trainer):
    if png is not None:
        pass
    elif trainer.is_global_zero:
        folder = Path(trainer.log_dir or trainer.default_root_dir)
"""
    assert rank_zero_collectives(hang) == ["6: trainer.log_dir"]
    early_return = """
def hook(self, trainer, pl_module):
    if trainer.sanity_checking or not trainer.is_global_zero:
        return
    pl_module.log("x", 1.0, sync_dist=True)
    trainer.strategy.barrier()
"""
    assert rank_zero_collectives(early_return) == ["5: pl_module.log('x', 1.0, sync_dist=True)", "6: trainer.strategy.barrier()"]
    decorated = "@rank_zero_only\ndef save(trainer):\n    trainer.save_checkpoint('x')\n"
    assert rank_zero_collectives(decorated) == ["3: trainer.save_checkpoint('x')"]
    fine = """
def hook(trainer):
    folder = run_dir(trainer)
    if trainer.global_rank != 0:
        trainer.strategy.barrier()
    if trainer.is_global_zero:
        render(folder)
"""
    assert rank_zero_collectives(fine) == []
