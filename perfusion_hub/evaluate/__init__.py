"""Evaluation: fidelity and text alignment of a concept over prompts, seeds and β; the demo."""

from perfusion_hub.evaluate.demo import DemoReport, run_demo
from perfusion_hub.evaluate.metrics import EvalRow, Summary
from perfusion_hub.evaluate.run import EvalReport, evaluate_concept

__all__ = ["DemoReport", "EvalReport", "EvalRow", "Summary", "evaluate_concept", "run_demo"]
