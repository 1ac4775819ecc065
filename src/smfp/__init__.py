"""SMFP: Stochastic MeanFlow Policies trained off-policy by entropic mirror descent.

Python API (the CLI is a thin layer over it)::

    from smfp import TrainConfig, train, load_agent, evaluate
    cfg = TrainConfig(algo="smfp", total_steps=20_000)
    cfg.env.env = "Pendulum-v1"
    result = train(cfg, callback=lambda step, row: None)
    agent = load_agent(result.run_dir)
    actions = agent.act(observations, mode="best-of-n")
"""

from smfp.agent import Agent, evaluate, load_agent
from smfp.config import TrainConfig
from smfp.training.loop import TrainResult, train

__all__ = ["Agent", "TrainConfig", "TrainResult", "evaluate", "load_agent", "train"]
__version__ = "0.1.0"
