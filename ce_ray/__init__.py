"""ce-ray: score, rerank and fine-tune cross-encoder rerankers at cluster scale on Ray."""

from .config import ConfigError, RerankConfig, ScoreConfig, TrainConfig, load_config
from .messages import InputError
from .model_folder import ModelError
from .runtime import RayStartError, surfaced_errors
from .score import predict, rank, run_score, score
from .rerank import rerank, run_rerank
from .train import TrainOutcome, train

__version__ = "0.1.0"

__all__ = ["predict", "rank", "score", "run_score", "rerank", "run_rerank", "train", "ScoreConfig", "RerankConfig",
           "TrainConfig", "TrainOutcome", "load_config", "InputError", "ConfigError", "ModelError", "RayStartError",
           "surfaced_errors", "__version__"]
