"""Training: the custom loop, precision policies, learning-rate schedules, checkpoints (imports TensorFlow)."""
from posekit.train.loop import TrainConfig, TrainingInterrupted, TrainResult, count_params, train
from posekit.train.precision import auto_policy, policy_scope, resolve_policy
from posekit.train.schedules import FinetuneSchedule, MetrabsSchedule, finetune_lr, metrabs_lr
