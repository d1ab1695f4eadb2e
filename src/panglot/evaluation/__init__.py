"""Evaluation on ShapesWorld: metrics (``metrics``), the seeded suite and task runners (``suite``), and the
Markdown + PNG report (``report``); ``runner.evaluate_run`` ties them together for a trained run. Every figure is given for seen / unseen prompts and 1, 2, 3 objects."""

from panglot.evaluation.heldout import heldout_loss
from panglot.evaluation.metrics import (
    Breakdown,
    attribute_accuracy,
    caption_correct,
    edit_correct,
    match_objects,
    normalize_answer,
    scene_equal,
    text_to_image_scores,
    vqa_correct,
)
from panglot.evaluation.report import read_metrics_jsonl, write_report
from panglot.evaluation.runner import evaluate_model, evaluate_run, summary
from panglot.evaluation.suite import (
    EvalItem,
    EvalModel,
    EvalSuite,
    TaskResult,
    cfg_sweep,
    eval_caption,
    eval_text_to_image,
    eval_vqa,
    evaluate,
    run_tasks,
    sampling_sweep,
    sweep_series,
    tqdm_progress,
)

__all__ = [
    "Breakdown",
    "EvalItem",
    "EvalModel",
    "EvalSuite",
    "TaskResult",
    "attribute_accuracy",
    "caption_correct",
    "cfg_sweep",
    "edit_correct",
    "eval_caption",
    "eval_text_to_image",
    "eval_vqa",
    "evaluate",
    "evaluate_model",
    "evaluate_run",
    "heldout_loss",
    "match_objects",
    "normalize_answer",
    "read_metrics_jsonl",
    "run_tasks",
    "sampling_sweep",
    "scene_equal",
    "summary",
    "sweep_series",
    "text_to_image_scores",
    "tqdm_progress",
    "vqa_correct",
    "write_report",
]
