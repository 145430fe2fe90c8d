from posekit.layers.graph_conv import GraphConv
from posekit.layers.nonlocal_block import GraphNonLocal
from posekit.layers.ghost_bn import GhostBatchNormalization
from posekit.layers.global_dropout import GlobalBatchDropout
from posekit.layers.acae import AffineCombiningAutoencoder
from posekit.layers.pipeline import ExecutionCounter, PipelinedNetwork, PipelineUnit, SkipHeatmapHead
