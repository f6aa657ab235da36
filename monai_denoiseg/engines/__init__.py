"""Training and evaluation engines: one trainer for every strategy, whole-volume evaluation."""

from .strategies import INPUTS, LOSS_TERMS, STRATEGIES, Strategy, get_strategy
from .trainer import (DenoiSegTrainer, StrategyBatch, load_network_weights, load_stage, make_optimizer, poly_scheduler,
                      stage_state_dict)
from .evaluator import DenoiSegEvaluator
from .handlers import ProgressBarHandler
from .inference import output_paths, run_inference
